"""One checkpoint of a run: its files, variables, status and protection."""

from __future__ import annotations

import datetime as dt
import functools
import json
import operator
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring_ascii

from django.conf import settings
from django.db import connections, models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.urls import reverse
from django.utils import timezone

from persistence import discovery, files

from .job import Job


def _column_adapter(adapt_value: Callable[[object], object]) -> Callable[[list], list]:
    """Adapt a column of values, each distinct object (and each kind of empty container) once.

    Rows of one scan share many values: empty lists and dicts, one insert time, and the variable
    list of every checkpoint of the same model (see ``scanning.record_scan``). Whole columns at a
    time: a call per value (for the lookup) cost as much as adapting the values themselves.
    """

    def adapt_column(column: list) -> list:
        # Every value is alive in ``column`` meanwhile, so no two of them share an id.
        keys = [id(value) if value or value.__class__ not in _EMPTY_CONTAINERS else value.__class__
                for value in column]
        distinct = dict(zip(keys, column, strict=True))
        if len(distinct) == len(column):
            return list(map(adapt_value, column))  # nothing shared (each checkpoint's files, its time)
        adapted = {key: adapt_value(value) for key, value in distinct.items()}
        return list(map(adapted.__getitem__, keys))

    return adapt_column


_EMPTY_CONTAINERS = frozenset({list, dict})


def _json_dumps(encoder: type[json.JSONEncoder] | None) -> Callable[[object], str]:
    """``json.dumps(value, cls=encoder)`` as a function of the value.

    ``json.dumps`` builds a new C encoder for every call, more than half the time of encoding a
    checkpoint's list of files; with the default encoder, this builds one for all of them. Used
    only when it encodes a sample exactly as ``json.dumps`` does (the constructor is private).
    """
    if encoder is None and c_make_encoder is not None:
        settings_from = json.JSONEncoder()
        try:
            encode = c_make_encoder(
                {}, settings_from.default, encode_basestring_ascii, None, settings_from.key_separator,
                settings_from.item_separator, False, False, True,
            )
            sample = [{"name": "a\u00e9\n", "size": 1, "x": [1.5, None, True, float("nan")]}, "", {}]
            if "".join(encode(sample, 0)) == json.dumps(sample):
                return lambda value: "".join(encode(value, 0))
        except (TypeError, ValueError):
            pass
    return functools.partial(json.dumps, cls=encoder)


class CheckpointQuerySet(models.QuerySet):
    def spread_by_step(self, run_id: int, points: int) -> list[int]:
        """Ids of at most ``points`` checkpoints of a run spread evenly over its steps: the first at
        or after each of ``points`` evenly spaced steps from its lowest to its highest.

        One index probe per point, so the cost does not grow with the run: a chart of a run of a
        million checkpoints reads ``points`` rows, not a million ids to take every n-th.
        """
        connection = connections[self.db]
        table = connection.ops.quote_name(Checkpoint._meta.db_table)
        with connection.cursor() as cursor:
            # Each end is a probe of the run's step index too (SQLite reads the whole range for
            # MIN and MAX in one query).
            end = f"SELECT step FROM {table} WHERE run_id = %s AND step IS NOT NULL ORDER BY step"
            cursor.execute(f"SELECT ({end} LIMIT 1), ({end} DESC LIMIT 1)", [run_id, run_id])
            low, high = cursor.fetchone()
            if low is None:
                return []
            targets = sorted({low + (high - low) * i // max(1, points - 1) for i in range(points)})
            # Both databases name a VALUES list's column ``column1``.
            cursor.execute(
                f"SELECT (SELECT c.id FROM {table} c WHERE c.run_id = %s AND c.step >= v.column1 "
                f"ORDER BY c.step, c.saved_at, c.id LIMIT 1) FROM (VALUES {', '.join(['(%s)'] * len(targets))}) v",
                [run_id, *targets],
            )
            return sorted({pk for (pk,) in cursor.fetchall() if pk is not None})

    def on_disk(self) -> CheckpointQuerySet:
        return self.exclude(status__in=Checkpoint.GONE)

    def may_become(self, status: str) -> CheckpointQuerySet:
        """Only the rows whose status may move to ``status`` (``Checkpoint.STATUS_TRANSITIONS``):
        filter every bulk status update through this, so that the rule holds however rows are read."""
        return self.filter(status__in=[s for s, targets in Checkpoint.STATUS_TRANSITIONS.items() if status in targets])

    def insert_many(self, rows: list[dict], batch_size: int = 5000) -> None:
        """Insert new rows, given as ``{attname: value}`` dicts: one ``executemany`` per batch, or
        on PostgreSQL one ``COPY``.

        A first scan of a run can find tens of thousands of checkpoints; ``bulk_create`` spends
        most of its time building model instances and preparing each value through the ORM
        (measured: 3 s per 10,000 rows, three times the scan itself). Here defaults are computed
        once per field, values adapted once per distinct object, and each column is gathered in
        one pass over the rows. A field that no row sets is left to the database when that gives
        the same value (a ``db_default``, or NULL for a nullable field without a default): fewer
        values to bind and check per row (see migration 0005). Primary keys are not returned.
        On PostgreSQL, ``executemany`` is one statement per row, each bound on the client
        (Django's default cursor): 2 s per 10,000 rows; ``COPY`` streams them in one.
        """
        if not rows:
            return
        connection = connections[self.db]
        ops, quote = connection.ops, connection.ops.quote_name
        copy = connection.vendor == "postgresql"
        given = set().union(*rows)
        fields = [
            f for f in Checkpoint._meta.concrete_fields
            if not f.primary_key
            and (f.attname in given or not (f.has_db_default() or f.null and not f.has_default()))
        ]
        # COPY reads each field as text and parses it by the column's type: the JSON text itself
        # (Django's adapter would wrap it, to be dumped again for every row). Elsewhere the
        # backend's adapter is json.dumps unless it says otherwise.
        json_as_text = copy or type(ops).adapt_json_value is BaseDatabaseOperations.adapt_json_value
        columns = []
        for field in fields:
            if isinstance(field, models.JSONField) and json_as_text:
                adapt = _column_adapter(_json_dumps(field.encoder))
            elif isinstance(field, models.JSONField):
                adapt = _column_adapter(functools.partial(ops.adapt_json_value, encoder=field.encoder))
            elif isinstance(field, models.DateTimeField) and connection.vendor == "sqlite" and settings.USE_TZ:
                # Django's SQLite adapter for the aware datetimes rows carry, without the checks it
                # repeats per value (a tenth of the time of a 10,000-row insert).
                adapt = _column_adapter(
                    lambda value, zone=connection.timezone: (
                        value if value.tzinfo is zone else value.astimezone(zone)
                    ).replace(tzinfo=None).isoformat(" ")  # what str() gives, one call less
                    if isinstance(value, dt.datetime) and value.utcoffset() is not None
                    else ops.adapt_datetimefield_value(value)
                )
            elif isinstance(field, models.DateTimeField):
                adapt = _column_adapter(ops.adapt_datetimefield_value)
            else:
                adapt = None
            columns.append((field.attname, field.get_default(), adapt))
        table, names = quote(Checkpoint._meta.db_table), ", ".join(quote(f.column) for f in fields)
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(fields))})"
        with connection.cursor() as cursor:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                values = []
                for attname, default, adapt in columns:
                    if attname in given:
                        try:
                            column = list(map(operator.itemgetter(attname), batch))
                        except KeyError:  # not in every row
                            column = [row.get(attname, default) for row in batch]
                        values.append(adapt(column) if adapt else column)
                    else:
                        values.append([adapt([default])[0] if adapt else default] * len(batch))
                if copy:
                    with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as stream:
                        for row in zip(*values, strict=True):
                            stream.write_row(row)
                else:
                    cursor.executemany(sql, list(zip(*values, strict=True)))


class Checkpoint(models.Model):
    PRESENT, INCOMPLETE, CORRUPT = discovery.PRESENT, discovery.INCOMPLETE, discovery.CORRUPT
    VERIFIED, PRUNED, MISSING = "verified", "pruned", "missing"
    # Deleted by the trainer's own rotation (a Saver's max_to_keep, a CheckpointManager): its files
    # vanished after the state file stopped listing it. Expected, unlike missing.
    ROTATED = "rotated"
    STATUS_CHOICES = [(s, s) for s in (PRESENT, INCOMPLETE, CORRUPT, VERIFIED, PRUNED, MISSING, ROTATED)]
    # Statuses whose files are gone: such rows keep what was recorded (step, metrics) for history.
    GONE = (PRUNED, MISSING, ROTATED)
    # Where a status may move. A pruned checkpoint was deleted on purpose: its files being gone
    # is what pruned means, so it never becomes missing (a scan that read the directory while a
    # prune was deleting would say so), and it is not verified without being found again first.
    # It comes back only when a scan finds its files on disk again (a trainer re-saved the step).
    # A rotated one likewise never becomes missing: its files are gone as the trainer meant. A
    # missing one becomes rotated once the state file no longer lists it (a CheckpointManager
    # deletes files before it rewrites the state file), and one of our save jobs' rotations
    # makes it pruned.
    _ANY = frozenset({PRESENT, INCOMPLETE, CORRUPT, VERIFIED, PRUNED, MISSING, ROTATED})
    STATUS_TRANSITIONS = {
        PRESENT: _ANY, INCOMPLETE: _ANY, CORRUPT: _ANY, VERIFIED: _ANY, MISSING: _ANY,
        PRUNED: frozenset({PRUNED, PRESENT, INCOMPLETE, CORRUPT}),
        ROTATED: frozenset({ROTATED, PRUNED, PRESENT, INCOMPLETE, CORRUPT}),
    }

    # No index of its own: every index below starts with the run (its lookups, deletes and
    # counts use those); one index fewer to maintain per inserted row.
    run = models.ForeignKey("dashboard.Run", related_name="checkpoints", on_delete=models.CASCADE, db_index=False)
    prefix = models.CharField(max_length=512)
    step = models.BigIntegerField(null=True, blank=True)
    saved_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PRESENT)
    format = models.CharField(max_length=8, blank=True)
    files = models.JSONField(default=list)  # [{"name", "size"}]
    has_own_meta = models.BooleanField(default=False)
    meta_source = models.ForeignKey(
        "self", null=True, blank=True, related_name="meta_dependents", on_delete=models.SET_NULL
    )
    size_bytes = models.BigIntegerField(default=0)
    variables = models.JSONField(default=list)  # [{"name", "shape", "dtype", "bytes"}]
    variable_count = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, db_default={}, blank=True)
    # For metrics read from event files: the step each value was logged at (the checkpoint's own,
    # or an earlier one in its save interval). Other keys of ``metrics`` came from our save jobs.
    # None: not matched against the event files yet.
    metric_steps = models.JSONField(null=True, blank=True)
    latest_in = models.JSONField(default=list, db_default=[], blank=True)  # names of state files naming it latest
    pinned = models.BooleanField(default=False, db_default=False)
    pin_reason = models.CharField(max_length=255, blank=True, db_default="")
    fingerprint = models.CharField(max_length=64, blank=True)
    problems = models.JSONField(default=list, blank=True)
    verification = models.JSONField(default=dict, db_default={}, blank=True)
    source = models.ForeignKey(
        "self", null=True, blank=True, related_name="derived", on_delete=models.SET_NULL,
        help_text="The checkpoint this one was re-saved from.",
    )
    recorded_at = models.DateTimeField(default=timezone.now)
    # When a scan found its files gone (rotated or missing); None while they are on disk.
    gone_at = models.DateTimeField(null=True, blank=True)

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "prefix"], name="unique_prefix_per_run")]
        indexes = [
            # The history's sorts, each with its tie-breaker: a page deep into a 100,000-checkpoint
            # run is read in index order instead of sorting the run's every row per request.
            # The id ends each one: it is the keyset cursor's last key (ties are common).
            models.Index(fields=["run", "step", "saved_at", "id"], name="checkpoint_run_step_saved_id"),
            models.Index(fields=["run", "saved_at", "id"], name="checkpoint_run_saved_id"),
            models.Index(fields=["run", "size_bytes", "id"], name="checkpoint_run_size_id"),
            models.Index(fields=["run", "status"]),
            # The run page's change stamp reads the newest recorded_at of a run every second.
            models.Index(fields=["run", "recorded_at"], name="checkpoint_run_recorded"),
        ]
        ordering = ["-step", "-saved_at"]

    def __str__(self) -> str:
        return f"{self.run.name}/{self.prefix}"

    def get_absolute_url(self) -> str:
        return reverse("checkpoint", args=[self.run.name, self.pk])

    @classmethod
    def may_move(cls, current: str | None, status: str) -> bool:
        """Whether a row's status may go from ``current`` to ``status`` (None: a new row)."""
        return current is None or status in cls.STATUS_TRANSITIONS.get(current, ())

    @property
    def is_latest(self) -> bool:
        return bool(self.latest_in)

    @property
    def path(self) -> str:
        """The checkpoint prefix as TensorFlow expects it (directory + prefix)."""
        return f"{self.run.directory.rstrip('/')}/{self.prefix}"

    @staticmethod
    def discovery_values(found: discovery.DiscoveredCheckpoint, *, shared: dict | None = None) -> dict:
        """Field values (by attname) for what discovery found on disk.

        With ``shared``, the rows of checkpoints that share one variable list (discovery hands out
        one list object per distinct list) share one encoded list too.
        """
        values = {
            "step": found.step,
            # A new checkpoint whose index could not be read just now is on disk, nothing more known.
            "status": Checkpoint.PRESENT if found.status == discovery.UNREADABLE else found.status,
            "format": found.format,
            "files": [{"name": f.name, "size": f.size} for f in found.files],
            "has_own_meta": found.has_own_meta,
            "size_bytes": found.size_bytes,
            "saved_at": dt.datetime.fromtimestamp(found.saved_at, tz=dt.UTC),
            "fingerprint": found.fingerprint,
            "problems": list(found.problems),
        }
        if not found.unchanged:
            hit = shared.get(id(found.variables)) if shared is not None else None
            if hit is not None and hit[0] is found.variables:
                variables = hit[1]
            else:
                variables = [
                    {"name": v.name, "shape": list(v.shape), "dtype": v.dtype, "bytes": v.nbytes}
                    for v in found.variables
                ]
                if shared is not None:  # keeps the list alive, so that its id is not reused
                    shared[id(found.variables)] = (found.variables, variables)
            values["variables"] = variables
            values["variable_count"] = len(found.variables)
        return values

    def as_json(self) -> dict:
        """The shape ``manage.py scan --json`` prints for one checkpoint."""
        return {
            "id": self.pk,
            "prefix": self.prefix,
            "step": self.step,
            "status": self.status,
            "gone_at": self.gone_at.isoformat() if self.gone_at else None,  # when rotated out / missing
            "size_bytes": self.size_bytes,
            "saved_at": self.saved_at.isoformat(),
            "files": [f["name"] for f in self.files],
            "meta_source": self.meta_source.prefix if self.meta_source_id else None,
            "is_latest": self.is_latest,
            "variables": [{"name": v["name"], "shape": v["shape"], "dtype": v["dtype"]} for v in self.variables],
            "metrics": self.metrics,
            "metric_steps": self.metric_steps or {},
            "problems": self.problems,
        }

    @property
    def slim_prefix(self) -> str:
        """Default prefix for a re-saved copy; the step stays the last "-N" so discovery files it there."""
        family = discovery.prefix_family(self.prefix)
        return f"{family}-slim-{self.step}" if self.step is not None else f"{self.prefix}-slim"

    def meta_path(self) -> str | None:
        """The ``.meta`` this checkpoint restores with: its own, else its meta source's (None: neither)."""
        if self.has_own_meta:
            return self.path + ".meta"
        if self.meta_source_id:
            return self.meta_source.path + ".meta"
        return None

    def check_files_at_use(self) -> None:
        """Refuse (``files.UnsafeFile``) unless every file of this checkpoint, and the meta graph it
        restores with, is a regular file inside ``CHECKPOINT_ROOTS`` now.

        Called right before TensorFlow opens them, by every job and command: a symbolic link
        created after the run was registered must not lead a freeze, a verify or a comparison to
        a file outside the roots. TensorFlow opens the files itself, so this cannot be a check on
        an open descriptor; the sandboxed child that runs graphs is the second line.
        """
        meta = self.meta_path()
        files.check_checkpoint_files(self.run.directory, self.prefix, settings.CHECKPOINT_ROOTS,
                                     extra=[meta] if meta else [])

    @property
    def freeze_in_progress(self) -> bool:
        return self.jobs.filter(kind=Job.FREEZE, status__in=[Job.QUEUED, Job.RUNNING]).exists()

    class FreezeRunning(ValueError):  # noqa: N818 - reads as what happened
        """Another freeze writes the same export file now; ``job`` is it (None: not a job).

        A ``ValueError``, so that every caller that shows a refusal to the user (retry, the
        command) shows this one too."""

        def __init__(self, message: str, job: Job | None = None):
            super().__init__(message)
            self.job = job

    @property
    def gone_reason(self) -> str:
        """Why its files are gone, in words ("" while they are on disk)."""
        return {
            self.ROTATED: "rotated out by the trainer's max_to_keep",
            self.MISSING: "missing",
            self.PRUNED: "pruned",
        }.get(self.status, "")

    @property
    def on_disk(self) -> bool:
        return self.status not in self.GONE

    @property
    def v1_refusal(self) -> str:
        """Why verify, restore and freeze refuse this checkpoint ("" when they do not)."""
        if self.format != discovery.TF1_V1:
            return ""
        return (f"{self.prefix} is in TensorFlow's V1 checkpoint format (one file, no .index): it is "
                "recorded and its variables are listed, but verify, restore and freeze need the V2 "
                "format. Re-save it with Saver(write_version=V2) to use them.")

    def reference(self) -> dict:
        """Which checkpoint, in the words ``manage.py compare --json`` uses for its sides."""
        return {"id": self.pk, "run": self.run.name, "prefix": self.prefix, "step": self.step, "path": self.path}
