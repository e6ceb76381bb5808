"""The records the dashboard keeps: runs, their checkpoints, exports, jobs and the audit trail.

The database is the truth the pages show. Files on disk are reconciled into it by scans (and by
our own save jobs the moment they write); RQ's own job records expire, our ``Job`` rows do not.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import connections, models, transaction
from django.urls import reverse
from django.utils import timezone

from persistence import discovery, files


def checkpoint_directory(path: str) -> Path:
    """Resolve a run directory and check it is an existing directory inside ``CHECKPOINT_ROOTS``.

    Raises ``ValueError`` with a message fit to show next to the form field.
    """
    text = (path or "").strip()
    if not text:
        raise ValueError("Enter a directory.")
    if not os.path.isabs(os.path.expanduser(text)):
        raise ValueError("Enter an absolute path.")
    try:
        real = files.resolve_inside(text, settings.CHECKPOINT_ROOTS)
    except files.PathOutsideRoots:
        roots = ", ".join(str(r) for r in settings.CHECKPOINT_ROOTS)
        raise ValueError(f"This directory is outside the checkpoint roots ({roots}).") from None
    if not real.is_dir():
        raise ValueError("This directory does not exist." if not real.exists() else "This is not a directory.")
    return real


class Run(models.Model):
    """A tracked checkpoint directory."""

    FORMAT_CHOICES = [(discovery.TF1, "TF1 Saver"), (discovery.TF2, "TF2 object")]
    BEST_MODE_CHOICES = [("min", "lowest is best"), ("max", "highest is best")]

    name = models.SlugField(max_length=100, unique=True)
    directory = models.CharField(max_length=1024, unique=True)
    format = models.CharField(max_length=8, choices=FORMAT_CHOICES, blank=True)
    recipe = models.CharField(max_length=255, blank=True, help_text="Model recipe for save and TF2 freeze jobs.")
    trusted = models.BooleanField(
        default=False, help_text="Allow graphs with file-system or Python ops to be restored and frozen."
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    last_scanned_at = models.DateTimeField(null=True, blank=True)
    directory_stamp = models.CharField(
        max_length=100, blank=True, help_text="Directory change token at the last full scan (see discovery)."
    )
    latest_prefix = models.CharField(max_length=512, blank=True, help_text="Named by the default state file.")
    last_preserved_timestamp = models.FloatField(null=True, blank=True)
    state_files = models.JSONField(default=list, blank=True)
    scan_problems = models.JSONField(default=list, blank=True)

    # Retention policy (DESIGN §5). Empty means "this rule is off".
    max_to_keep = models.PositiveIntegerField(null=True, blank=True)
    keep_checkpoint_every_n_hours = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    keep_every_n_steps = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    keep_best_n = models.PositiveIntegerField(null=True, blank=True)
    best_metric = models.CharField(max_length=100, blank=True)
    best_mode = models.CharField(max_length=3, choices=BEST_MODE_CHOICES, default="min")
    min_age_seconds = models.PositiveIntegerField(default=600)
    protect_exported = models.BooleanField(default=True)
    auto_prune = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("operate_run", "Can start save, restore, freeze, scan and compare jobs"),
            ("maintain_run", "Can prune, pin, make latest and edit retention"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if self._state.adding:
            self.apply_default_retention()  # settings.DEFAULT_RETENTION (issue 5)
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("run", args=[self.name])

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        try:
            self.directory = str(checkpoint_directory(self.directory))
        except ValueError as exc:
            raise ValidationError({"directory": str(exc)}) from None

    def scan(self, *, full: bool = False, now: dt.datetime | None = None) -> dict:
        """Rescan the directory and record what was found; return counts of what changed.

        When the directory has not changed since the last scan (see ``discovery.directory_stamp``)
        nothing is listed or read, unless ``full``. Imports TensorFlow when an index must be read.
        Checkpoints are stored chunk by chunk as discovery describes them; with thousands to read
        and a processor to spare, discovery reads in a forked child meanwhile (it never touches
        this process's database connection; see ``discovery.describe_chunks``).
        """
        checkpoint_directory(self.directory)  # the root list may have changed since registration
        stamp = discovery.directory_stamp(self.directory)
        if stamp and stamp == self.directory_stamp and not full:
            self.last_scanned_at = now or timezone.now()
            self.save(update_fields=["last_scanned_at"])
            return {
                "created": 0, "updated": 0, "missing": 0, "unchanged_directory": True,
                "checkpoints": self.checkpoints.on_disk().count(), "problems": list(self.scan_problems),
            }
        listing = discovery.list_directory(self.directory, roots=settings.CHECKPOINT_ROOTS)
        known = {} if full else self.known_fingerprints()
        # Meta sources first: the checkpoints that restore with them are then inserted linked.
        sources = set(listing.meta_sources.values())
        order = [p for p in listing.prefixes if p in sources] + [p for p in listing.prefixes if p not in sources]
        chunks = _slowed(discovery.describe_chunks(listing, order, known=known))
        with discovery.gc_paused():
            counts, found = self._record_scan(
                chunks, listing.state_files, listing.problems, now=now, stamp=stamp or ""
            )
        if not stamp or discovery.directory_stamp(self.directory) != stamp:
            # The directory changed while it was read (a trainer saved): the state files listed
            # at the start may be older than what a save job recorded meanwhile.
            self.refresh_latest()
        return {**counts, "unchanged_directory": False, "checkpoints": found, "problems": list(listing.problems)}

    def apply_scan(
        self, result: discovery.ScanResult, *, now: dt.datetime | None = None, stamp: str = ""
    ) -> dict[str, int]:
        """Reconcile a scan of this run's directory into rows; return counts of what changed.

        Unchanged checkpoints (same fingerprint) are not touched, which keeps a rescan of a large
        run to a handful of queries. Rows whose files vanished become ``missing``; rows we pruned
        stay ``pruned``.
        """
        with discovery.gc_paused():
            counts, _ = self._record_scan(
                [result.checkpoints], result.state_files, result.problems, now=now, stamp=stamp
            )
        return counts

    def _record_scan(
        self,
        chunks: Iterable[list[discovery.DiscoveredCheckpoint]],
        state_files: list[discovery.StateFile],
        problems: list[str],
        *,
        now: dt.datetime | None,
        stamp: str,
    ) -> tuple[dict[str, int], int]:
        """``apply_scan`` for checkpoints that arrive in chunks (each stored as it comes); also
        returns how many checkpoints were found. ``chunks`` must hold every checkpoint on disk.

        Producing a chunk reads index files (TensorFlow): that happens outside any transaction.
        What was read is then stored in short transactions (every ``SCAN_STORE_ROWS`` rows or
        ``SCAN_STORE_SECONDS``), and the run-wide updates (missing rows, latest flags, the run's
        fields) in a last one, each under the run's row lock, which prunes, saves, pins and other
        scans of the run take too. So a writer waits for one store at most, never for the whole
        scan (on SQLite a long transaction stops every other writer), and what another writer
        did meanwhile is seen before anything is written:
        rows it inserted are not inserted again, rows whose status it changed are not overwritten
        with what this scan read before (see ``Checkpoint.STATUS_TRANSITIONS``).
        """
        now = now or timezone.now()
        latest_by_prefix: dict[str, list[str]] = {}
        for state in state_files:
            if state.latest:
                latest_by_prefix.setdefault(state.latest, []).append(state.name)
        default_state = next((s for s in state_files if s.name == "checkpoint"), None)
        found: dict[str, discovery.DiscoveredCheckpoint] = {}

        # Plain tuples, not model instances: a rescan of a large run must stay a few queries.
        existing = {
            prefix: (pk, status) for pk, prefix, status in self.checkpoints.values_list("id", "prefix", "status")
        }
        ids = {prefix: pk for prefix, (pk, _) in existing.items()}  # and of new rows once inserted
        unlinked: dict[str, list[str]] = {}  # meta source -> new rows inserted before it
        counts = {"created": 0, "updated": 0, "missing": 0, "stale": 0}
        touched: set[str] = set()
        created_at = timezone.now()
        shared: dict = {}  # identical variable lists are encoded once
        pending: list[discovery.DiscoveredCheckpoint] = []
        stored_at = time.monotonic()
        for chunk in itertools.chain(chunks, [None]):  # None: store what is left
            for found_ckpt in chunk or ():
                found[found_ckpt.prefix] = found_ckpt
            pending.extend(chunk or ())
            if pending and (
                chunk is None or len(pending) >= self.SCAN_STORE_ROWS
                or time.monotonic() - stored_at >= self.SCAN_STORE_SECONDS
            ):
                with transaction.atomic():
                    self._lock_row()
                    self._store_chunk(pending, existing, ids, unlinked, found, shared, created_at, counts, touched)
                pending, stored_at = [], time.monotonic()

        gone = [p for p, (_, status) in existing.items() if p not in found and status != Checkpoint.PRUNED]
        with transaction.atomic():
            self._lock_row()
            for source, prefixes in unlinked.items():
                if source in ids:
                    for start in range(0, len(prefixes), 5000):
                        self.checkpoints.filter(prefix__in=prefixes[start : start + 5000]).update(
                            meta_source_id=ids[source]
                        )
            if gone and self.running_prune() is not None:
                # A prune is deleting files right now: the rows it deletes are its to mark
                # (pruned), not missing. Anything else gone is marked by the next scan.
                counts["stale"] += len(gone)
            else:
                for start in range(0, len(gone), 5000):
                    missing = (
                        self.checkpoints.filter(prefix__in=gone[start : start + 5000])
                        .may_become(Checkpoint.MISSING)
                        .exclude(status=Checkpoint.MISSING)
                    )
                    counts["missing"] += missing.update(status=Checkpoint.MISSING)

            self._link_meta_sources(found, touched=touched)
            self._mark_latest(latest_by_prefix)

            self.format = discovery.directory_format(found.values()) or self.format
            self.latest_prefix = (default_state.latest or "") if default_state else ""
            self.last_preserved_timestamp = default_state.last_preserved_timestamp if default_state else None
            self.state_files = [{"name": s.name, "latest": s.latest, "problem": s.problem} for s in state_files]
            self.scan_problems = list(problems)
            self.last_scanned_at = now
            # Rows left as another writer had them were not reconciled, and an index that could not
            # be read must be read again: either way the next scan must not take the directory as
            # unchanged.
            unreadable = any(f.status == discovery.UNREADABLE for f in found.values())
            self.directory_stamp = "" if counts["stale"] or unreadable else stamp
            self.save(
                update_fields=[
                    "format", "latest_prefix", "last_preserved_timestamp", "state_files",
                    "scan_problems", "last_scanned_at", "directory_stamp",
                ]
            )
        stale = counts.pop("stale")
        if stale:
            counts["left_to_next_scan"] = stale
        return counts, len(found)

    # A scan stores what it read every this many rows or seconds, whichever comes first: one
    # transaction (and on SQLite one commit to sync) per discovery chunk of 250 cost a first scan
    # a fifth of its time, and a writer waiting on the run lock waits for one such store only.
    SCAN_STORE_ROWS = 2500
    SCAN_STORE_SECONDS = 1.0

    def _lock_row(self) -> None:
        # The run's row lock (on SQLite the IMMEDIATE transaction already holds the write lock).
        Run.objects.select_for_update().filter(pk=self.pk).first()

    def _store_chunk(
        self, chunk: list[discovery.DiscoveredCheckpoint], existing: dict[str, tuple[int, str]],
        ids: dict[str, int], unlinked: dict[str, list[str]], found: dict[str, discovery.DiscoveredCheckpoint],
        shared: dict, created_at: dt.datetime, counts: dict[str, int], touched: set[str],
    ) -> None:
        """Store checkpoints a scan has read; call under the run's row lock. See ``_record_scan``."""
        rows, changed, unreadable = [], [], []
        for found_ckpt in chunk:
            known = existing.get(found_ckpt.prefix)
            if known is None:
                values = Checkpoint.discovery_values(found_ckpt, shared=shared)
                values.update(run_id=self.pk, prefix=found_ckpt.prefix, recorded_at=created_at)
                rows.append(values)
            elif found_ckpt.status == discovery.UNREADABLE:
                # The index could not be read just now (permissions, I/O, memory): that says
                # nothing about the checkpoint, so its status and details stay as they were.
                unreadable.append(Checkpoint(pk=known[0], fingerprint=found_ckpt.fingerprint,
                                             problems=list(found_ckpt.problems)))
            elif not found_ckpt.unchanged:
                # Missing and pruned rows are left out of ``known_fingerprints``, so every row
                # here was re-read by discovery and all its fields are fresh.
                changed.append((known, found_ckpt))
        if rows:
            # Another scan or a save job may have recorded some of them since ``existing`` was read.
            recorded = dict(
                self.checkpoints.filter(prefix__in=[r["prefix"] for r in rows]).values_list("prefix", "id")
            )
            if recorded:
                ids.update(recorded)
                rows = [r for r in rows if r["prefix"] not in recorded]
                counts["stale"] += len(recorded)
        updated = []
        if changed:
            now_status = dict(
                Checkpoint.objects.filter(pk__in=[pk for (pk, _), _ in changed]).values_list("id", "status")
            )
            for (pk, status), found_ckpt in changed:
                current = now_status.get(pk)
                if current != status or not Checkpoint.may_move(current, found_ckpt.status):
                    counts["stale"] += 1  # changed by another writer since this scan read it
                    continue
                updated.append(
                    Checkpoint(pk=pk, run=self, prefix=found_ckpt.prefix, **Checkpoint.discovery_values(found_ckpt))
                )
        detail_fields = [
            "step", "status", "format", "files", "has_own_meta", "size_bytes", "saved_at",
            "variables", "variable_count", "fingerprint", "problems",
        ]
        Checkpoint.objects.bulk_update(updated, detail_fields, batch_size=500)
        Checkpoint.objects.bulk_update(unreadable, ["fingerprint", "problems"], batch_size=500)
        touched.update(r.prefix for r in updated)
        counts["created"] += len(rows)
        counts["updated"] += len(updated)
        self._insert_linked(rows, found, ids, unlinked)

    def _insert_linked(
        self, rows: list[dict], found: dict[str, discovery.DiscoveredCheckpoint], ids: dict[str, int],
        unlinked: dict[str, list[str]],
    ) -> None:
        """Insert new rows with their ``meta_source`` set, sources first.

        Setting the link at insert time saves an UPDATE of every dependent row (all checkpoints
        of a ``write_meta_graph=False`` run depend on the first one). ``ids`` maps the prefixes of
        rows already stored to their ids and learns those of new sources; a row whose source is
        not stored yet is noted in ``unlinked`` (source -> prefixes) for the caller to link later.
        """
        new_sources = {found[r["prefix"]].meta_source for r in rows} - ids.keys() - {None}
        first = [r for r in rows if r["prefix"] in new_sources]
        if first:
            Checkpoint.objects.insert_many(first)
            stored = self.checkpoints.filter(prefix__in=[r["prefix"] for r in first])
            ids.update(stored.values_list("prefix", "id"))
            # A checkpoint with its own .meta (every source has one) is its own meta source.
            stored.update(meta_source_id=models.F("id"))
        rest = []
        for row in rows:
            if row["prefix"] in new_sources:
                continue
            source = found[row["prefix"]].meta_source
            if source is not None:
                row["meta_source_id"] = ids.get(source)
                if row["meta_source_id"] is None:
                    unlinked.setdefault(source, []).append(row["prefix"])
            rest.append(row)
        Checkpoint.objects.insert_many(rest)

    def _link_meta_sources(self, found: dict[str, discovery.DiscoveredCheckpoint], touched: set[str]) -> None:
        # One UPDATE per distinct meta source (usually a single first checkpoint), not one per row.
        dependents: dict[str, list[str]] = {}
        for prefix in touched:
            source = found[prefix].meta_source
            if source:
                dependents.setdefault(source, []).append(prefix)
        if not dependents:
            return
        ids = dict(self.checkpoints.filter(prefix__in=list(dependents)).values_list("prefix", "id"))
        for source, prefixes in dependents.items():
            for start in range(0, len(prefixes), 5000):
                self.checkpoints.filter(prefix__in=prefixes[start : start + 5000]).update(
                    meta_source_id=ids.get(source)
                )

    def _mark_latest(self, latest_by_prefix: dict[str, list[str]]) -> None:
        # Only the few rows whose flag changes are written: a run has a handful of state files.
        self.checkpoints.exclude(latest_in=[]).exclude(prefix__in=latest_by_prefix).update(latest_in=[])
        for prefix, names in latest_by_prefix.items():
            self.checkpoints.filter(prefix=prefix).update(latest_in=sorted(names))

    def set_trusted(self, trusted: bool, *, actor=None) -> None:
        """Allow (or forbid again) restoring and freezing graphs with file-system or Python ops."""
        if self.trusted == trusted:
            return
        self.trusted = trusted
        self.save(update_fields=["trusted"])
        AuditEvent.record(
            "trust" if trusted else "distrust",
            f"{'Trusted' if trusted else 'Stopped trusting'} the graphs of {self.name}",
            actor=actor, run=self,
        )

    def record_metrics(self, metrics_by_prefix: dict[str, dict[str, float]]) -> int:
        """Attach training metrics (loss, accuracy, …) to checkpoints by prefix; return rows updated."""
        rows = list(self.checkpoints.filter(prefix__in=metrics_by_prefix).only("id", "prefix", "metrics"))
        for row in rows:
            row.metrics = {**(row.metrics or {}), **metrics_by_prefix[row.prefix]}
        Checkpoint.objects.bulk_update(rows, ["metrics"], batch_size=2000)
        return len(rows)

    # --- restore, freeze and make latest (issue 4) ---

    def recipe_path(self) -> str:
        """The dotted path of this run's recipe: its own, else the first registered one."""
        return self.recipe or (settings.CHECKPOINT_RECIPES[0] if settings.CHECKPOINT_RECIPES else "")

    def sample_feed(self, placeholders: list) -> dict:
        """The recipe's sample input for those ``placeholders`` (``InputSpec``) it fits by name and shape.

        Placeholders left out are fed zeros by the engines. A run trained with another model (or
        a recipe that cannot be loaded) simply gets zeros: verification still compares like with like.
        """
        import numpy as np

        from persistence.recipes import RecipeError, load_recipe

        try:
            sample = load_recipe(self.recipe_path()).sample_input()
        except (RecipeError, NotImplementedError):
            return {}
        fits = {}
        for spec in placeholders:
            if spec.name not in sample:
                continue
            array = np.asarray(sample[spec.name])
            if spec.shape is not None and (
                len(spec.shape) != array.ndim
                or any(d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=True))
            ):
                continue
            fits[spec.name] = array
        return fits

    def make_latest(self, checkpoint: Checkpoint, *, user=None, state_file: str = "checkpoint"):
        """Point ``state_file`` at ``checkpoint`` (a rollback), update the rows' flags, audit it.

        Pure Python (``persistence.statefile``): safe to call from a view. The run row is locked
        for the duration so that a prune of the same run cannot interleave its state-file rewrite.
        Raises ``ValueError`` with a message for users.
        """
        from dataclasses import asdict

        from persistence import restore

        if checkpoint.run_id != self.pk:
            raise ValueError(f"{checkpoint.prefix} does not belong to run {self.name}.")
        if checkpoint.status not in (Checkpoint.PRESENT, Checkpoint.VERIFIED):
            raise ValueError(
                f"{checkpoint.prefix} is {checkpoint.status}: only a present or verified checkpoint can be "
                "made latest."
            )
        checkpoint_directory(self.directory)
        with transaction.atomic():
            Run.objects.select_for_update().filter(pk=self.pk).first()
            self._check_no_prune_running("make a checkpoint latest")
            try:
                result = restore.make_latest(self.directory, checkpoint.prefix, state_file=state_file)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
            self.refresh_latest()
            AuditEvent.record(
                "make_latest",
                f"{state_file} now names {checkpoint.prefix} as latest (was {result.previous_latest or 'nothing'})",
                actor=user, run=self, checkpoint=checkpoint, details=asdict(result),
            )
        return result

    def refresh_latest(self) -> None:
        """Re-read the run's state files and update which rows are latest (no TensorFlow, no rescan)."""
        from persistence import statefile

        with transaction.atomic():
            # Read under the run lock, like a save job records the state file its Saver wrote: the
            # flags written last are then never older than the file.
            self._lock_row()
            names = statefile.find_state_files(self.directory)
            states = [s for s in (statefile.sniff_state_file(self.directory, n) for n in names) if s is not None]
            latest_by_prefix: dict[str, list[str]] = {}
            for state in states:
                if state.latest:
                    latest_by_prefix.setdefault(state.latest, []).append(state.name)
            default = next((s for s in states if s.name == statefile.DEFAULT_STATE_FILE), None)
            self._mark_latest(latest_by_prefix)
            self.latest_prefix = (default.latest or "") if default else ""
            self.last_preserved_timestamp = default.last_preserved_timestamp if default else None
            self.state_files = [{"name": s.name, "latest": s.latest, "problem": s.problem} for s in states]
            self.save(update_fields=["latest_prefix", "last_preserved_timestamp", "state_files"])

    def known_fingerprints(self) -> dict[str, str]:
        return dict(
            self.checkpoints.exclude(status__in=[Checkpoint.MISSING, Checkpoint.PRUNED]).values_list(
                "prefix", "fingerprint"
            )
        )

    def record_saved(self, saved, *, source: Checkpoint | None = None, pruned_note: str = "", actor=None) -> Checkpoint:
        """Record a checkpoint our own job has just written, the moment it is written.

        ``saved`` is a ``persistence.training.SavedCheckpoint``. Rows of the checkpoints the
        Saver's ``max_to_keep`` deleted in that save become ``pruned`` (with ``pruned_note``, and
        an audit event). Reads the new ``.index`` (TensorFlow): call it from a worker.
        """
        found = discovery.describe_checkpoint(self.directory, saved.prefix, meta_source=saved.meta_source)
        values = {**Checkpoint.discovery_values(found), "metrics": dict(saved.metrics), "recorded_at": timezone.now()}
        with transaction.atomic():
            # A scan of this run may be storing this very prefix: the run lock orders the two.
            self._lock_row()
            if saved.meta_source:
                values["meta_source_id"] = self.checkpoints.filter(prefix=saved.meta_source).values_list(
                    "id", flat=True
                ).first()
            if source is not None:
                values["source_id"] = source.pk
            checkpoint, _ = Checkpoint.objects.update_or_create(run=self, prefix=saved.prefix, defaults=values)
            gone = self.checkpoints.filter(prefix__in=saved.deleted).exclude(status=Checkpoint.PRUNED)
            gone_rows = list(gone.values_list("id", "size_bytes")) if saved.deleted else []
            if gone_rows:
                note = pruned_note or "Deleted by TensorFlow's Saver (max_to_keep)."
                Checkpoint.objects.filter(pk__in=[pk for pk, _ in gone_rows]).update(
                    status=Checkpoint.PRUNED, problems=[note]
                )
                AuditEvent.record(
                    "saver_pruned", f"Saver max_to_keep deleted {', '.join(saved.deleted)}", actor=actor, run=self,
                    bytes_freed=sum(size for _, size in gone_rows),
                    details={"deleted": saved.deleted, "files": saved.deleted_files, "by_save_of": saved.prefix},
                )
            if saved.state_file:
                self._point_state_file(saved.state_file, checkpoint)
        return checkpoint

    def _point_state_file(self, state_file: str, checkpoint: Checkpoint) -> None:
        # The Saver just rewrote ``state_file`` to name ``checkpoint`` as latest.
        for row in self.checkpoints.exclude(latest_in=[]).exclude(pk=checkpoint.pk).only("id", "latest_in"):
            if state_file in row.latest_in:
                Checkpoint.objects.filter(pk=row.pk).update(latest_in=[n for n in row.latest_in if n != state_file])
        checkpoint.latest_in = sorted({*checkpoint.latest_in, state_file})
        Checkpoint.objects.filter(pk=checkpoint.pk).update(latest_in=checkpoint.latest_in)
        if state_file == "checkpoint":
            self.latest_prefix = checkpoint.prefix
            self.save(update_fields=["latest_prefix"])

    def step_over_step_checkpoints(self, last: int) -> list[Checkpoint]:
        """The newest ``last`` readable checkpoints, oldest first: the columns of the heatmap.

        Incomplete and corrupt checkpoints are left out: one unreadable file would fail the chain.
        """
        newest = self.checkpoints.filter(status__in=[Checkpoint.PRESENT, Checkpoint.VERIFIED]).order_by(
            models.F("step").desc(nulls_last=True), "-saved_at"
        )
        return list(newest.only("id", "run_id", "prefix", "step", "fingerprint", "saved_at", "variables")[:last])[::-1]

    def step_over_step(self, *, last: int = 50, on_progress=None) -> dict:
        """Relative change of every variable between consecutive checkpoints (imports TensorFlow).

        The result is what a finished step-over-step job stores as its ``result``.
        Raises ``Comparison.CannotCompare`` when there is nothing to compare or a file is unreadable.
        """
        from persistence import compare as engine

        try:
            checkpoint_directory(self.directory)
        except ValueError as exc:
            raise Comparison.CannotCompare(f"run {self.name}: {exc}") from None
        chosen = self.step_over_step_checkpoints(last)
        for c in chosen:
            c.run = self  # for c.path without one query per checkpoint
        if len(chosen) < 2:
            raise Comparison.CannotCompare("Step over step needs at least two readable checkpoints on disk.")
        try:
            for c in chosen:
                c.check_files_at_use()
        except ValueError as exc:
            raise Comparison.CannotCompare(f"run {self.name}: {exc}") from None
        try:
            data = engine.step_over_step([c.path for c in chosen], on_progress=on_progress)
        except Exception as exc:
            message = Comparison.read_error_message(exc)
            if message is None:
                raise
            raise Comparison.CannotCompare(message) from exc
        # The engine leaves both the value and the note empty for a pair whose numbers are not
        # finite and for a variable absent from both checkpoints; the heatmap must tell them apart.
        names = [{v["name"] for v in c.variables} for c in chosen]
        for name, values in data["relative_change"].items():
            notes = data["notes"][name]
            for i, value in enumerate(values):
                if value is None and notes[i] is None:
                    both = name in names[i] and name in names[i + 1]
                    notes[i] = Comparison.NOTE_NOT_FINITE if both else Comparison.NOTE_ABSENT
        return {
            "mode": "steps",
            "last": last,
            "checkpoints": [
                {"id": c.pk, "step": c.step, "prefix": c.prefix, "fingerprint": c.fingerprint} for c in chosen
            ],
            "variables": data["variables"],
            "relative_change": data["relative_change"],
            "l2_diff": data["l2_diff"],
            "notes": data["notes"],
        }

    def step_over_step_jobs(self) -> models.QuerySet[Job]:
        """Step-over-step jobs of this run (compare jobs with ``mode: steps``), newest first."""
        return self.jobs.filter(kind=Job.COMPARE, params__mode="steps").order_by("-created_at")

    def latest_step_over_step(self) -> Job | None:
        """The newest finished step-over-step job: its ``result`` holds the heatmap."""
        return self.step_over_step_jobs().filter(status=Job.FINISHED).order_by("-ended_at").first()

    # --- retention (issue 5, DESIGN §5 and §7) ---

    RETENTION_FIELDS = (
        "max_to_keep", "keep_checkpoint_every_n_hours", "keep_every_n_steps", "keep_best_n", "best_metric",
        "best_mode", "min_age_seconds", "protect_exported", "auto_prune",
    )

    class PruneRefused(Exception):  # noqa: N818 - reads as what happened
        """A prune that must not run (another one holds the run, or the run changed); says why."""

    def apply_default_retention(self) -> None:
        """Give a new run ``settings.DEFAULT_RETENTION`` for every policy field left at the model default."""
        for name, value in getattr(settings, "DEFAULT_RETENTION", {}).items():
            field = self._meta.get_field(name)
            if getattr(self, name) == field.get_default():
                setattr(self, name, value)

    def retention_values(self) -> dict:
        return {name: getattr(self, name) for name in self.RETENTION_FIELDS}

    def retention_policy(self, **overrides):
        """This run's policy as ``persistence.retention`` takes it; ``overrides`` replace single rules
        (``manage.py prune --max-to-keep 3`` …) without changing the stored policy."""
        from persistence.retention import RetentionPolicy

        values = {k: v for k, v in self.retention_values().items() if k != "auto_prune"}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise ValueError(f"unknown retention rule(s): {', '.join(unknown)}")
        values.update(overrides)
        values["best_metric"] = values["best_metric"] or None
        return RetentionPolicy(**values)

    def update_retention(self, values: dict, *, actor=None) -> dict:
        """Store a new policy (already validated by ``RetentionPolicyForm``) and audit what changed.

        Returns ``{field: [old, new]}`` for the fields that changed (empty: nothing saved).
        """
        with transaction.atomic():
            before = Run.objects.select_for_update().filter(pk=self.pk).values(*self.RETENTION_FIELDS).get()
            changes = {
                name: [before[name], values[name]]
                for name in self.RETENTION_FIELDS
                if name in values and values[name] != before[name]
            }
            for name, (_, new) in changes.items():
                setattr(self, name, new)
            if changes:
                self.save(update_fields=list(changes))
                text = ", ".join(f"{name} {_shown(old)} → {_shown(new)}" for name, (old, new) in changes.items())
                AuditEvent.record(
                    "retention_policy", f"Retention policy of {self.name}: {text}"[:500], actor=actor, run=self,
                    details={"changes": changes, "policy": self.retention_values()},
                )
        return changes

    def retention_facts(self) -> list:
        """Every recorded checkpoint of the run as ``CheckpointFacts``: what the planner sees.

        One query for the rows and one for exports. Pruned and missing rows count only through
        files of theirs still on disk (typically a ``.meta`` kept for later checkpoints), so only
        for them is the disk looked at. Times come from the database, which keeps microseconds;
        where a state file records the checkpoint's time (``CheckpointManager``) its exact value is
        used, so that the hours rule compares exactly what TensorFlow compares.
        """
        from persistence.retention import GONE_STATUSES, CheckpointFacts

        rows = self._retention_rows()
        exported = set(Export.objects.filter(checkpoint__run=self).values_list("checkpoint_id", flat=True))
        prefix_of = {row[0]: row[1] for row in rows}
        exact = self._state_file_timestamps()
        facts = []
        for pk, prefix, step, saved_at, size, files_, source_id, metrics, pinned, reason, latest_in, status in rows:
            sizes = {f["name"]: f["size"] for f in files_ or []}
            if status in GONE_STATUSES and sizes:
                sizes = {n: s for n, s in sizes.items() if os.path.lexists(os.path.join(self.directory, n))}
                size = sum(sizes.values())
            when = saved_at.timestamp()
            recorded = exact.get(prefix)
            if recorded is not None and abs(recorded - when) <= 1e-6:
                when = recorded
            meta = f"{prefix}.meta"
            facts.append(
                CheckpointFacts(
                    prefix=prefix, step=step, saved_at=when, size_bytes=size, files=tuple(sizes),
                    meta_file=meta if meta in sizes else None, meta_source=prefix_of.get(source_id),
                    metrics=metrics or {}, pinned=pinned, pin_reason=reason, is_latest=bool(latest_in),
                    has_export=pk in exported, status=status, file_sizes=sizes,
                )
            )
        return facts

    def _retention_rows(self) -> list[tuple]:
        """The columns retention reads, converted here rather than by the ORM: for 10,000 rows
        Django's per-value converters cost several times the query itself (measured: 0.16 s of CPU
        against 0.03 s), and the preview, the prune job and every auto-prune check plan whole runs."""
        import json

        rows = self.checkpoints.values_list(
            "id", "prefix", "step", "saved_at", "size_bytes", "files", "meta_source_id", "metrics", "pinned",
            "pin_reason", "latest_in", "status",
        )
        sql, params = rows.query.sql_with_params()
        with connections[rows.db].cursor() as cursor:
            cursor.execute(sql, params)
            raw = cursor.fetchall()

        def column(index: int) -> list:
            # JSON arrives as text (SQLite; PostgreSQL too, by Django's choice): one json.loads per
            # column, not per value, which is where the time went.
            values = [row[index] for row in raw]
            if all(isinstance(v, str) for v in values):
                return json.loads("[" + ",".join(values) + "]")
            return [json.loads(v) if isinstance(v, str | bytes) else v for v in values]

        def moment(value) -> dt.datetime:  # SQLite: naive UTC text; PostgreSQL: an aware datetime
            value = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

        files_, metrics, latest = column(5), column(7), column(10)
        return [
            (pk, prefix, step, moment(saved), size, files_[i], source, metrics[i], bool(pinned), reason, latest[i], status)
            for i, (pk, prefix, step, saved, size, _, source, _, pinned, reason, _, status) in enumerate(raw)
        ]

    def _state_file_timestamps(self) -> dict[str, float]:
        from persistence.statefile import DEFAULT_STATE_FILE, StateFileError, read_state_file

        names = sorted((s.get("name") for s in self.state_files or [] if s.get("name")),
                       key=lambda n: n != DEFAULT_STATE_FILE, reverse=True)
        exact: dict[str, float] = {}
        for name in names:  # the default state file last, so that its times win (as in discovery)
            try:
                exact.update(read_state_file(self.directory, name).timestamps)
            except (StateFileError, OSError):
                continue
        return exact

    def plan_retention(self, *, now: float | None = None, policy=None, facts: list | None = None):
        """Plan a prune from the rows (pure Python: safe in the web process). ``ValueError`` for a bad policy.

        ``facts``: ``retention_facts()`` already read (the preview shows them next to the plan).
        """
        import time

        from persistence.retention import plan_retention

        return plan_retention(
            self.retention_facts() if facts is None else facts, policy or self.retention_policy(),
            now=time.time() if now is None else now, last_preserved_timestamp=self.last_preserved_timestamp,
        )

    def running_prune(self, *, exclude: Job | None = None) -> Job | None:
        """The prune job that holds this run now, if any (DESIGN §7: one prune per run at a time).

        A prune holds its run from its claim (``claim_prune``) until it releases it, however it
        ends. A holder whose process is gone (``kill -9``: same machine, process no longer there)
        holds nothing, and its job, if still ``running``, is marked failed on the way; one on another
        machine holds the run until the reconciler fails its job.
        """
        # A canceled prune's process may still be deleting for the moment it takes to stop it.
        recent = timezone.now() - dt.timedelta(minutes=10)
        jobs_ = self.jobs.filter(kind=Job.PRUNE).filter(
            models.Q(status=Job.RUNNING) | models.Q(status=Job.CANCELED, ended_at__gte=recent)
        )
        if exclude is not None:
            jobs_ = jobs_.exclude(pk=exclude.pk)
        # Only the holder is read: a running prune's result also holds its whole plan.
        for pk, status, holder in jobs_.values_list("id", "status", "result__holder"):
            if not isinstance(holder, dict) or holder.get("released"):
                continue
            alive = _process_alive(holder)
            if alive is False:
                Job.objects.filter(pk=pk, status=Job.RUNNING).update(
                    status=Job.FAILED, ended_at=timezone.now(),
                    error="The process running this prune died (killed?) before it finished; retry it to "
                          "finish the plan.",
                )
                continue
            if alive is None and status != Job.RUNNING:
                continue  # another machine's: trust the row, which the reconciler keeps honest
            return Job.objects.defer("result").get(pk=pk)
        return None

    def claim_prune(self, job: Job) -> None:
        """Make ``job`` the one prune of this run, or raise ``Run.PruneRefused``.

        The check and the claim happen under the run's row lock (``select_for_update`` on
        PostgreSQL; on SQLite the IMMEDIATE transaction holds the database's write lock), so two
        prunes can never both see the run free. Only the claim is locked, not the whole prune: a
        long transaction would hide the job's progress and, on SQLite, stop every other writer.
        """
        with transaction.atomic():
            Run.objects.select_for_update().filter(pk=self.pk).first()
            other = self.running_prune(exclude=job)
            if other is not None:
                raise Run.PruneRefused(
                    f"Another prune of run {self.name} is running (job #{other.pk}); wait for it to finish."
                )
            job.result = {**(job.result or {}), "holder": _this_process()}
            Job.objects.filter(pk=job.pk).update(result=job.result)

    def release_prune(self, job: Job) -> None:
        holder = (job.result or {}).get("holder")
        if holder and not holder.get("released"):
            job.result = {**job.result, "holder": {**holder, "released": True}}
            Job.objects.filter(pk=job.pk).update(result=job.result)

    def _check_no_prune_running(self, action: str) -> None:
        # Call under the run's row lock, like claim_prune.
        running = self.running_prune()
        if running is not None:
            raise ValueError(f"A prune of run {self.name} is running (job #{running.pk}); {action} when it has finished.")

    def prune(self, job: Job, *, on_progress=None) -> dict:
        """The body of a prune job (and of ``manage.py prune``): claim the run, plan, execute, record.

        ``job.params``: ``fingerprint`` (the previewed plan: refuse unless the run still plans to
        exactly that), ``overrides`` (rules replacing the stored policy for this prune), ``auto``
        (auto-prune after a scan: no preview to match). A retry of an attempt that recorded its plan
        but did not finish (killed mid-way) finishes that very plan. Raises ``Run.PruneRefused``.
        """
        from dataclasses import asdict

        from persistence.retention import Plan

        self.claim_prune(job)
        try:
            params = job.params or {}
            policy = self.retention_policy(**(params.get("overrides") or {}))
            unfinished = _unfinished_plan(job)
            if unfinished is not None:
                attempt = unfinished
                plan = Plan.from_dict(attempt.result["plan"])
                policy_used = attempt.result.get("policy")
                self._check_still_deletable(plan)
                resumed_from = attempt.pk
            else:
                plan = self.plan_retention(policy=policy)
                wanted = params.get("fingerprint")
                if wanted and wanted != plan.fingerprint:
                    raise Run.PruneRefused("The run changed since the preview — preview again.")
                policy_used, resumed_from = asdict(policy), None
            # Recorded before anything is deleted: a retry of this job finishes exactly this plan.
            job.result = {
                **(job.result or {}), "plan": plan.to_dict(), "policy": policy_used, "resumed_from": resumed_from,
            }
            Job.objects.filter(pk=job.pk).update(result=job.result)
            outcome = self.apply_plan(
                plan, actor=job.requested_by, job=job, policy=policy_used, on_progress=on_progress,
                auto=bool(params.get("auto")), resumed_from=resumed_from,
            )
        finally:
            self.release_prune(job)
        return {**job.result, **outcome}

    def _check_still_deletable(self, plan) -> None:
        # A plan finished after a crash was checked when it started; what the user protected since
        # (pinned, made latest, exported) must still stop it.
        doomed = plan.deleted_prefixes
        protected = (
            self.checkpoints.filter(prefix__in=doomed)
            .filter(models.Q(pinned=True) | ~models.Q(latest_in=[]) | models.Q(exports__isnull=False))
            .values_list("prefix", flat=True)
        )
        names = sorted(set(protected))
        if names:
            raise Run.PruneRefused(
                f"The unfinished plan deletes {', '.join(names[:5])}, which is now pinned, latest or exported; "
                "preview again."
            )

    def apply_plan(self, plan, *, actor=None, job: Job | None = None, policy: dict | None = None,
                   on_progress=None, auto: bool = False, resumed_from: int | None = None) -> dict:
        """Execute ``plan`` on this run's directory and record it: rows, state files, audit.

        Every file the plan deletes must be a file of a recorded checkpoint of this run, and the
        directory must still be inside ``CHECKPOINT_ROOTS``; the engine refuses anything outside
        the directory and rewrites the state files atomically before deleting. Rows of deleted
        checkpoints become ``pruned``, their ``files`` listing only what stayed on disk (a ``.meta``
        kept for later checkpoints). Files that could not be deleted are reported by raising
        ``ValueError`` after recording what was done; running the plan again finishes it.
        """
        from persistence import retention, statefile

        directory = str(checkpoint_directory(self.directory))
        self._check_plan_files(plan)
        result = retention.execute_plan(
            directory, plan, state_files=statefile.find_state_files(directory), on_progress=on_progress
        )
        gone = set(result.deleted) | set(result.already_gone)
        with transaction.atomic():
            # The lock a scan takes to store what it found: a scan that read the directory
            # mid-prune then sees these rows pruned, and leaves them so.
            self._lock_row()
            pruned = self._mark_pruned(plan, gone, job)
            # A prune keeps every state file's latest; what changes is the anchor of the hours rule,
            # which the engine wrote into the default state file (no need to re-read them all).
            if statefile.DEFAULT_STATE_FILE in result.state_files and plan.last_preserved_timestamp:
                self.last_preserved_timestamp = plan.last_preserved_timestamp
                self.save(update_fields=["last_preserved_timestamp"])
            # The plan's figure once it is done (part of it may have been done by a killed attempt);
            # what this run measured when some files are left.
            freed = result.bytes_freed if result.failed else plan.bytes_freed
            execution = {
                "deleted_files": len(result.deleted), "already_gone": result.already_gone,
                "failed": result.failed, "measured_bytes_freed": result.bytes_freed,
                "state_files": result.state_files, "problems": result.problems,
            }
            event = None
            if plan.files_to_delete or not auto:
                who = "Auto-prune" if auto else "Prune"
                event = AuditEvent.record(
                    "prune",
                    f"{who} of {self.name}: {pruned} checkpoint{'s' if pruned != 1 else ''} deleted, "
                    f"{plan.kept_count} kept",
                    actor=actor, run=self, bytes_freed=freed,
                    details={
                        "job": job.pk if job else None, "fingerprint": plan.fingerprint, "auto": auto,
                        "resumed_from": resumed_from, "policy": policy,
                        "plan": plan.to_dict(), "execution": execution,
                    },
                )
        if result.failed:
            names = ", ".join(f"{n} ({why})" for n, why in list(result.failed.items())[:5])
            raise ValueError(f"{len(result.failed)} file(s) could not be deleted: {names}. Run the prune again "
                             "once that is fixed; it finishes the plan.")
        return {
            "fingerprint": plan.fingerprint, "checkpoints_deleted": pruned, "kept": plan.kept_count,
            "bytes_freed": freed, "execution": execution, "audit_event": event.pk if event else None,
        }

    def _check_plan_files(self, plan) -> None:
        # Never delete a file that belongs to no recorded checkpoint (a plan read back from a job's
        # JSON is only as good as that JSON).
        doomed = [d.prefix for d in plan.decisions if d.delete_files]
        recorded = set()
        for start in range(0, len(doomed), 5000):
            chunk = self.checkpoints.filter(prefix__in=doomed[start : start + 5000]).values_list("files", flat=True)
            recorded.update(f["name"] for files_ in chunk for f in files_ or [])
        stray = [name for name in plan.files_to_delete if name not in recorded]
        if stray:
            raise ValueError(f"The plan names {len(stray)} file(s) no recorded checkpoint of {self.name} has, "
                             f"e.g. {stray[0]}; refusing to delete anything.")

    def _mark_pruned(self, plan, gone: set[str], job: Job | None) -> int:
        """Rows whose ``.index`` is gone become ``pruned``; each keeps only its files still on disk."""
        ids = dict(self.checkpoints.values_list("prefix", "id"))
        when = timezone.now().strftime("%Y-%m-%d %H:%M UTC")
        by_job = f" (job #{job.pk})" if job else ""
        emptied: dict[tuple, list[int]] = {}
        pruned = 0
        for decision in plan.decisions:
            if decision.keep or not decision.delete_files or decision.prefix not in ids:
                continue
            removed = [name for name in decision.delete_files if name in gone]
            if f"{decision.prefix}.index" in removed:
                pruned += 1
            why = "; ".join(r for r in decision.reasons if r.startswith("deleted: "))
            note = f"Deleted by a prune on {when}{by_job}: {why}"
            if decision.keep_meta_only or len(removed) < len(decision.delete_files):
                # Rare (a kept-alive .meta, a file that could not be deleted): one row at a time.
                row = Checkpoint.objects.only("id", "files", "status").get(pk=ids[decision.prefix])
                left = [f for f in row.files if f["name"] not in removed]
                if decision.keep_meta_only:
                    note += "; its .meta stays: a kept checkpoint restores with it"
                values = {"files": left, "problems": [note]}
                if f"{decision.prefix}.index" not in {f["name"] for f in left}:
                    values.update(status=Checkpoint.PRUNED, latest_in=[])
                Checkpoint.objects.filter(pk=row.pk).update(**values)
            else:
                emptied.setdefault((note,), []).append(ids[decision.prefix])
        for (note,), pks in emptied.items():
            # One UPDATE per distinct note (usually one), in chunks SQLite accepts.
            for start in range(0, len(pks), 5000):
                Checkpoint.objects.filter(pk__in=pks[start : start + 5000]).may_become(Checkpoint.PRUNED).update(
                    status=Checkpoint.PRUNED, files=[], latest_in=[], problems=[note]
                )
        return pruned


def _slowed(chunks: Iterable[list]) -> Iterator[list]:
    delay = getattr(settings, "SCAN_CHUNK_DELAY_SECONDS", 0)
    for chunk in chunks:
        if delay:
            time.sleep(delay)  # fault-injection tests only (settings.SCAN_CHUNK_DELAY_SECONDS)
        yield chunk


def _cached_adapter(adapt_value):
    """Adapt values, each distinct object (and each kind of empty container) once.

    Rows of one scan share many values: empty lists and dicts, one insert time, and the variable
    list of every checkpoint of the same model (see ``Run.apply_scan``).
    """
    cache: dict[object, tuple[object, object]] = {}

    def adapt(value):
        if isinstance(value, list | dict) and not value:
            hit = cache.get(type(value))
            if hit is None:
                hit = cache[type(value)] = (value, adapt_value(value))
            return hit[1]
        hit = cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        adapted = adapt_value(value)
        cache[id(value)] = (value, adapted)  # keeps ``value`` alive, so its id is not reused
        return adapted

    return adapt


class CheckpointQuerySet(models.QuerySet):
    def on_disk(self) -> CheckpointQuerySet:
        return self.exclude(status__in=[Checkpoint.PRUNED, Checkpoint.MISSING])

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
        columns = []
        for field in fields:
            if isinstance(field, models.JSONField) and copy:
                # COPY reads each field as text and parses it by the column's type: the JSON text
                # itself (Django's adapter would wrap it, to be dumped again for every row).
                adapt = _cached_adapter(lambda value, encoder=field.encoder: json.dumps(value, cls=encoder))
            elif isinstance(field, models.JSONField):
                adapt = _cached_adapter(lambda value: ops.adapt_json_value(value, None))
            elif isinstance(field, models.DateTimeField) and connection.vendor == "sqlite" and settings.USE_TZ:
                # Django's SQLite adapter for the aware datetimes rows carry, without the checks it
                # repeats per value (a tenth of the time of a 10,000-row insert).
                adapt = _cached_adapter(
                    lambda value, zone=connection.timezone: (
                        value if value.tzinfo is zone else value.astimezone(zone)
                    ).replace(tzinfo=None).isoformat(" ")  # what str() gives, one call less
                    if isinstance(value, dt.datetime) and value.utcoffset() is not None
                    else ops.adapt_datetimefield_value(value)
                )
            elif isinstance(field, models.DateTimeField):
                adapt = _cached_adapter(ops.adapt_datetimefield_value)
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
                        column = [row.get(attname, default) for row in batch]
                        values.append(list(map(adapt, column)) if adapt else column)
                    else:
                        values.append([adapt(default) if adapt else default] * len(batch))
                if copy:
                    with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as stream:
                        for row in zip(*values, strict=True):
                            stream.write_row(row)
                else:
                    cursor.executemany(sql, list(zip(*values, strict=True)))


class Checkpoint(models.Model):
    PRESENT, INCOMPLETE, CORRUPT = discovery.PRESENT, discovery.INCOMPLETE, discovery.CORRUPT
    VERIFIED, PRUNED, MISSING = "verified", "pruned", "missing"
    STATUS_CHOICES = [(s, s) for s in (PRESENT, INCOMPLETE, CORRUPT, VERIFIED, PRUNED, MISSING)]
    # Where a status may move. A pruned checkpoint was deleted on purpose: its files being gone
    # is what pruned means, so it never becomes missing (a scan that read the directory while a
    # prune was deleting would say so), and it is not verified without being found again first.
    # It comes back only when a scan finds its files on disk again (a trainer re-saved the step).
    _ANY = frozenset({PRESENT, INCOMPLETE, CORRUPT, VERIFIED, PRUNED, MISSING})
    STATUS_TRANSITIONS = {
        PRESENT: _ANY, INCOMPLETE: _ANY, CORRUPT: _ANY, VERIFIED: _ANY, MISSING: _ANY,
        PRUNED: frozenset({PRUNED, PRESENT, INCOMPLETE, CORRUPT}),
    }

    run = models.ForeignKey(Run, related_name="checkpoints", on_delete=models.CASCADE)
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

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "prefix"], name="unique_prefix_per_run")]
        indexes = [
            models.Index(fields=["run", "step"]),
            models.Index(fields=["run", "saved_at"]),
            models.Index(fields=["run", "size_bytes"]),
            models.Index(fields=["run", "status"]),
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
            "size_bytes": self.size_bytes,
            "saved_at": self.saved_at.isoformat(),
            "files": [f["name"] for f in self.files],
            "meta_source": self.meta_source.prefix if self.meta_source_id else None,
            "is_latest": self.is_latest,
            "variables": [{"name": v["name"], "shape": v["shape"], "dtype": v["dtype"]} for v in self.variables],
            "metrics": self.metrics,
            "problems": self.problems,
        }

    def pin(self, reason: str = "", *, actor=None) -> None:
        """Keep this checkpoint whatever the retention policy says (audited). ``ValueError`` for users."""
        if not self.on_disk:
            raise ValueError(f"{self.prefix} is {self.status}: only a checkpoint on disk can be pinned.")
        self._set_pin(True, reason.strip(), actor=actor, summary=f"Pinned {self.prefix}: {reason.strip()}")

    def unpin(self, reason: str = "", *, actor=None) -> None:
        was = self.pin_reason
        why = f" ({reason.strip()})" if reason.strip() else ""
        self._set_pin(False, "", actor=actor, summary=f"Unpinned {self.prefix}{why}; it was pinned for: {was or '—'}")

    def _set_pin(self, pinned: bool, reason: str, *, actor, summary: str) -> None:
        with transaction.atomic():
            # Under the run's row lock: a prune that already planned must not delete what is pinned now.
            Run.objects.select_for_update().filter(pk=self.run_id).first()
            self.run._check_no_prune_running("pin or unpin")
            self.pinned, self.pin_reason = pinned, reason
            self.save(update_fields=["pinned", "pin_reason"])
            AuditEvent.record("pin" if pinned else "unpin", summary[:500], actor=actor, run=self.run, checkpoint=self,
                              details={"reason": reason})

    @property
    def slim_prefix(self) -> str:
        """Default prefix for a re-saved copy; the step stays the last "-N" so discovery files it there."""
        family = discovery.prefix_family(self.prefix)
        return f"{family}-slim-{self.step}" if self.step is not None else f"{self.prefix}-slim"

    # --- restore / verify / freeze (issue 4) ---
    # ``verify`` and ``freeze`` import TensorFlow (lazily, through ``persistence``): they are the one
    # code path of the jobs and of ``manage.py verify`` / ``freeze``, never called from a view.

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

    @staticmethod
    def clean_outputs(outputs: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(o.strip() for o in outputs if o and o.strip()))

    def freeze_target(self, outputs: Iterable[str]) -> Path:
        """The file a freeze of ``outputs`` writes; raises ``PathOutsideRoots`` if it would escape."""
        if self.format == discovery.TF2:
            return self.export_path("serve")  # the recipe's serve function, whatever is ticked
        return self.export_path(self.export_name(self.clean_outputs(outputs)))

    def running_freeze(self, outputs: Iterable[str], *, statuses: Iterable[str] = ("queued", "running"),
                       exclude: Job | None = None) -> Job | None:
        """The freeze job (in ``statuses``) that writes the same file as a freeze of ``outputs``."""
        target = self.freeze_target(outputs)
        candidates = (Job.objects.filter(kind=Job.FREEZE, status__in=list(statuses), run_id=self.run_id)
                      .select_related("checkpoint__run").order_by("created_at"))
        for job in candidates:
            if exclude is not None and job.pk == exclude.pk or job.checkpoint is None:
                continue
            try:
                if job.checkpoint.freeze_target((job.params or {}).get("outputs") or []) == target:
                    return job
            except files.PathOutsideRoots:
                continue
        return None

    def check_no_freeze_running(self, outputs: Iterable[str], *, exclude: Job | None = None,
                                statuses: Iterable[str] = ("queued", "running")) -> None:
        """Raise :class:`FreezeRunning` when a freeze writing the same file is queued or running.

        Call inside a transaction before recording a new freeze: the checkpoint's row lock makes
        the check and the insert one step for concurrent requests (SQLite serialises writers).
        """
        Checkpoint.objects.select_for_update().filter(pk=self.pk).first()
        try:
            other = self.running_freeze(outputs, statuses=statuses, exclude=exclude)
        except files.PathOutsideRoots:
            return  # the freeze itself refuses the path, with the reason
        if other is not None:
            raise self.FreezeRunning(
                f"{self.prefix}: a freeze writing {Path(self.freeze_target(outputs)).name} is already "
                f"{other.status} (job #{other.pk}); wait for it to end.", other,
            )

    @staticmethod
    def export_name(outputs: list[str]) -> str:
        """A file-name-safe name for a freeze of ``outputs`` (``probs`` -> ``probs``; scopes -> ``_``)."""
        import re

        from persistence.graphsafety import node_name

        text = "-".join(node_name(o) for o in outputs)
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:80] or "frozen"

    def export_path(self, name: str) -> Path:
        """``EXPORT_ROOT/<run>/<step>/<name>.pb``, resolved; raises ``PathOutsideRoots`` if it escapes."""
        import re

        root = Path(settings.EXPORT_ROOT)
        step = str(self.step) if self.step is not None else re.sub(r"[^A-Za-z0-9_-]+", "_", self.prefix)
        return files.resolve_inside(root / self.run.name / step / f"{name}.pb", [root])

    @staticmethod
    def _progress_span(on_progress, start: float, end: float):
        # The engines report 0-100 for their own part; a job shows one bar for all of its parts.
        if on_progress is None:
            return None
        return lambda percent, message: on_progress(start + (end - start) * percent / 100, message)

    def sandbox_limits(self, *, writable: tuple[str, ...] = ()):
        """Limits for a child process that reads this checkpoint or runs its graph (settings-driven)."""
        from persistence import sandbox

        return sandbox.SandboxLimits(
            memory_bytes=sandbox.memory_limit(self.size_bytes, base_mb=settings.GRAPH_MEMORY_LIMIT_BASE_MB,
                                              factor=settings.GRAPH_MEMORY_LIMIT_FACTOR),
            cpu_seconds=settings.GRAPH_CPU_LIMIT_SECONDS or None,
            writable=writable,
            isolate=settings.GRAPH_SANDBOX_ISOLATE,
        )

    def verify(self, *, output: str = "", on_progress=None) -> dict:
        """Read every tensor (TensorFlow checks CRCs), store per-variable statistics and the status.

        A damaged checkpoint is a result (``corrupt``/``incomplete``/``missing`` with TensorFlow's
        message), not an exception. A read that failed without evidence of damage (permission
        denied, out of memory, an I/O error or timeout) changes no status: the error is recorded
        as ``verification["read_error"]`` beside the last verdict, and the next verify that reads
        the checkpoint replaces it. A sound TF1 checkpoint is then restored into its meta graph (its
        own ``.meta`` or its meta source's) in a fresh graph and, when ``output`` is given, that
        tensor is run on the recipe's sample input (zeros for placeholders it does not fit).
        Returns what is stored on ``verification``. Both parts run in a limited child process; a
        limit it hits raises ``SandboxError`` and leaves the status as it was (the checkpoint may
        well be sound: it is our limit that stopped the read).
        """
        from dataclasses import asdict

        from persistence import restore
        from persistence.sandbox import run_sandboxed

        if self.status == self.PRUNED:
            raise ValueError(f"{self.prefix} was pruned: its files are gone")
        if self.v1_refusal:
            raise ValueError(self.v1_refusal)
        checkpoint_directory(self.run.directory)
        self.check_files_at_use()
        result = run_sandboxed(restore.verify_checkpoint, self.path, limits=self.sandbox_limits(),
                               on_progress=self._progress_span(on_progress, 0, 80))
        if result.status == restore.UNREADABLE:
            # Not a verdict on the checkpoint: keep its status and the last verification's findings.
            verification = {
                **{k: v for k, v in (self.verification or {}).items() if k != "read_error"},
                "status": self.status,
                "read_error": {
                    "message": result.message,
                    "failed_tensor": result.failed_tensor,
                    "checked_at": timezone.now().isoformat(),
                },
            }
            verification.setdefault("message", "Not verified yet.")
            self.verification = verification
            self.save(update_fields=["verification"])
            return verification
        verification = {
            "status": result.status,
            "message": result.message,
            "failed_tensor": result.failed_tensor,
            "bytes_read": result.bytes_read,
            "seconds": round(result.seconds, 3),
            "checked_at": timezone.now().isoformat(),
            "variables": [asdict(v) for v in result.variables],
        }
        if result.ok:
            verification["restore"] = self._restore_check(output, self._progress_span(on_progress, 80, 100))
        # restore's statuses are named like ours: verified, corrupt, incomplete, missing.
        self.status, self.verification = result.status, verification
        self.save(update_fields=["status", "verification"])
        return verification

    def partial_restore(self, *, recipe_path: str, variables: list[str] | None = None,
                        name_map: dict[str, str] | None = None) -> dict:
        """Restore a subset of this checkpoint into a fresh graph of ``recipe_path`` (transfer learning).

        ``variables`` are graph variable names (None: all); ``name_map`` maps a graph variable to
        the checkpoint key it is read from. Reports what was restored, what was left initialised
        and what did not fit (absent, other shape or dtype). Writes nothing. Imports TensorFlow.
        Raises ``ValueError`` (``UnknownNameError`` naming close matches) for bad names.
        """
        from persistence import restore
        from persistence.recipes import RecipeError, load_recipe
        from persistence.sandbox import run_sandboxed

        if self.status in (self.PRUNED, self.MISSING):
            raise ValueError(f"{self.prefix} is {self.status}: its files are gone")
        if self.v1_refusal:
            raise ValueError(self.v1_refusal)
        checkpoint_directory(self.run.directory)
        self.check_files_at_use()
        try:
            load_recipe(recipe_path)
        except RecipeError as exc:
            raise ValueError(str(exc)) from None
        result = run_sandboxed(restore.partial_restore_with_recipe, self.path, recipe_path,
                               name_map=name_map or {}, variables=variables or None, limits=self.sandbox_limits())
        return {"mode": "partial", "recipe": recipe_path, **result.to_dict()}

    def _restore_check(self, output: str, on_progress) -> dict:
        from dataclasses import asdict

        from persistence import restore
        from persistence.graphsafety import UnsafeGraphError, load_meta_graph_def
        from persistence.sandbox import SandboxChildError, SandboxError, run_sandboxed

        if self.format == discovery.TF2:
            return {"ok": None, "note": "TF2 object checkpoint: there is no meta graph to restore into."}
        meta = self.meta_path()
        if meta is None or not os.path.isfile(meta):
            return {"ok": False, "error": "No meta graph: neither this checkpoint nor an earlier one has a .meta."}
        check: dict = {"meta": os.path.basename(meta), "output": output or None}
        try:
            placeholders = restore.placeholder_inputs(load_meta_graph_def(meta).graph_def)
            feed = self.run.sample_feed(placeholders)
            ran = run_sandboxed(
                restore.restore_and_run, self.path, meta, feed=feed, outputs=[output] if output else [],
                allow_unsafe=self.run.trusted, on_progress=on_progress, limits=self.sandbox_limits(),
            )
        except (UnsafeGraphError, ValueError, OSError, SandboxError, SandboxChildError) as exc:
            # UnknownNameError is a ValueError; a TensorFlow error that could not cross the process
            # boundary as itself arrives as a SandboxChildError carrying its type and message.
            return {**check, "ok": False, "error": str(exc)}
        except restore.RestoreFailed as exc:  # e.g. a graph that does not match the checkpoint
            return {**check, "ok": False, "error": str(exc), "verdict": exc.failure.verdict}
        return {
            **check, "ok": True, "fed": sorted(feed), "zero_filled": ran.zero_filled,
            "outputs": [asdict(s) for s in ran.summaries], "seconds": round(ran.seconds, 3),
        }

    def freeze(self, *, outputs: list[str], clear_devices: bool = True, variables_allowlist: list[str] | None = None,
               variables_denylist: list[str] | None = None, user=None, on_progress=None,
               job: Job | None = None) -> Export:
        """Freeze into ``EXPORT_ROOT/<run>/<step>/<name>.pb``, verify it against the checkpoint, record it.

        TF1: ``outputs`` are node names of the meta graph (own or meta source's); the recipe's sample
        input is fed where it fits, zeros elsewhere; unsafe ops are refused unless the run is
        trusted. TF2: the run's recipe module is traced (``outputs`` must be among its outputs).
        Raises ``persistence.freeze.FreezeError`` or ``UnsafeGraphError`` with a message for users;
        nothing is written at the final path then. Re-freezing the same outputs replaces the file
        and updates its ``Export`` row (downloads keep their id). ``job`` is the freeze job running
        this, if any. Raises :class:`FreezeRunning` while another freeze writes the same file.
        """
        from persistence import freeze as engine
        from persistence.graphsafety import load_meta_graph_def, node_name
        from persistence.recipes import RecipeError, load_recipe
        from persistence.restore import placeholder_inputs
        from persistence.sandbox import SandboxChildError, SandboxError, run_sandboxed

        if self.status in (self.PRUNED, self.MISSING):
            raise engine.FreezeError(f"{self.prefix} is {self.status}: its files are gone")
        if self.v1_refusal:
            raise engine.FreezeError(self.v1_refusal)
        try:
            checkpoint_directory(self.run.directory)
            self.check_files_at_use()
        except ValueError as exc:  # files.UnsafeFile is one
            raise engine.FreezeError(f"run {self.run.name}: {exc}") from None
        outputs = self.clean_outputs(outputs)
        # A job was checked when it was started; here only another running one counts (the queued
        # ones start after this). A freeze without a job (the command) also waits for queued ones.
        with transaction.atomic():
            self.check_no_freeze_running(outputs, exclude=job,
                                         statuses=(Job.RUNNING,) if job else (Job.QUEUED, Job.RUNNING))
        tf2 = self.format == discovery.TF2
        if tf2:
            try:
                recipe = load_recipe(self.run.recipe_path())
            except RecipeError as exc:
                raise engine.FreezeError(f"TF2 checkpoints are frozen through the run's recipe: {exc}") from None
            unknown = [o for o in outputs if node_name(o) not in recipe.output_names]
            if unknown:
                raise engine.FreezeError(
                    f"unknown output(s) {', '.join(unknown)}: recipe {recipe.name} serves "
                    f"{', '.join(recipe.output_names) or 'nothing'}"
                )
            name = "serve"
        elif not outputs:
            raise engine.FreezeError("choose at least one output node")
        else:
            name = self.export_name(outputs)
        try:
            target = self.export_path(name)
        except files.PathOutsideRoots as exc:
            raise engine.FreezeError(f"export path refused: {exc}") from None
        other = Export.objects.filter(path=str(target)).exclude(checkpoint=self).select_related("checkpoint").first()
        if other is not None:
            raise engine.FreezeError(
                f"{target.name} in {target.parent} is the export of {other.checkpoint.prefix} (same step): "
                "freezing this checkpoint there would overwrite it"
            )
        # A freeze killed mid-write (kill -9) leaves its temporary file beside the target; nothing
        # else would ever remove it. Only files of writers that have ended go: another freeze
        # writing into this directory right now keeps its file.
        stale = files.remove_stale_temp_files(target.parent, owner_ended=temp_owner_ended)
        owner = f"job{job.pk}" if job is not None else None  # None: the writing process
        # The child may write only beneath the export directory (and its scratch directory).
        target.parent.mkdir(parents=True, exist_ok=True)
        limits = self.sandbox_limits(writable=(str(target.parent),))
        meta = None
        if tf2:
            sample = recipe.sample_input()
            try:
                result = run_sandboxed(engine.freeze_tf2_with_recipe, self.path, str(target),
                                       recipe_path=self.run.recipe_path(), sample_feed=sample,
                                       on_progress=on_progress, limits=limits, temp_owner=owner)
            except (SandboxError, SandboxChildError) as exc:
                raise engine.FreezeError(str(exc)) from None
        else:
            meta = self.meta_path()
            if meta is None:
                raise engine.FreezeError(
                    f"missing meta graph: {self.prefix} has no .meta and no earlier checkpoint of run "
                    f"{self.run.name} provides one, so there is no graph structure to freeze"
                )
            try:
                sample = self.run.sample_feed(placeholder_inputs(load_meta_graph_def(meta).graph_def))
            except (OSError, ValueError):
                sample = {}  # freeze_checkpoint says what is wrong with the meta graph
            try:
                result = run_sandboxed(
                    engine.freeze_checkpoint, self.path, meta, str(target), outputs=outputs,
                    clear_devices=clear_devices, variables_allowlist=variables_allowlist or None,
                    variables_denylist=variables_denylist or None, sample_feed=sample,
                    allow_unsafe=self.run.trusted, on_progress=on_progress, limits=limits, temp_owner=owner,
                )
            except (SandboxError, SandboxChildError) as exc:
                raise engine.FreezeError(str(exc)) from None
        data = result.to_dict()
        verification = {
            "tolerance": engine.VERIFY_TOLERANCE,
            "sample_inputs": sorted(sample),
            "zero_filled": data["zero_filled"],
            "output_keys": data["output_keys"],
            "meta": os.path.basename(meta) if meta else None,
            "clear_devices": clear_devices,
            "variables_allowlist": variables_allowlist or [],
            "variables_denylist": variables_denylist or [],
            "unsafe_ops_allowed": data["unsafe_ops_allowed"],
            "stale_temp_files_removed": stale,
            "seconds": round(data["seconds"], 3),
        }
        export, _ = Export.objects.update_or_create(
            path=str(target),
            defaults={
                "checkpoint": self, "kind": Export.FROZEN_PB, "size_bytes": data["size_bytes"], "sha256": data["sha256"],
                "inputs": data["inputs"], "outputs": data["outputs"], "node_count": data["node_count"],
                "op_histogram": data["op_histogram"], "max_abs_diff": data["max_abs_diff"],
                "verified": data["verified"], "verification": verification, "created_at": timezone.now(),
                "file_mtime_ns": os.stat(target).st_mtime_ns,
                "created_by": user if getattr(user, "is_authenticated", False) else None,
            },
        )
        return export

    @property
    def on_disk(self) -> bool:
        return self.status not in (self.PRUNED, self.MISSING)

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


class Export(models.Model):
    FROZEN_PB = "frozen_pb"
    KIND_CHOICES = [(FROZEN_PB, "Frozen GraphDef (.pb)")]

    checkpoint = models.ForeignKey(Checkpoint, related_name="exports", on_delete=models.PROTECT)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default=FROZEN_PB)
    path = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    inputs = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    node_count = models.PositiveIntegerField(default=0)
    op_histogram = models.JSONField(default=dict)
    max_abs_diff = models.FloatField(null=True, blank=True)
    verified = models.BooleanField(default=False)
    verification = models.JSONField(default=dict, blank=True)
    # The file's mtime when it was verified: with the size, what tells "changed on disk" cheaply.
    file_mtime_ns = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at"]
        # One row per file: two rows for one path made every later freeze of it fail.
        constraints = [models.UniqueConstraint(fields=["path"], name="unique_export_path")]

    def __str__(self) -> str:
        return f"{self.checkpoint} → {self.path}"

    def get_absolute_url(self) -> str:
        return reverse("export", args=[self.pk])

    @property
    def display_name(self) -> str:
        """The export's name within its step directory (``probs`` for ``.../300/probs.pb``)."""
        return Path(self.path).stem

    def file_path(self) -> Path:
        """The file, resolved with symlinks; raises ``files.PathOutsideRoots`` unless inside ``EXPORT_ROOT``."""
        return files.resolve_inside(self.path, [settings.EXPORT_ROOT])

    def disk_change(self, info: os.stat_result | None = None) -> str | None:
        """Why the file no longer is the one that was verified (None: it still is, as far as size
        and mtime tell). ``info``: an ``fstat`` of the opened file, else the path is looked at."""
        if info is None:
            try:
                info = os.stat(self.file_path())
            except (OSError, files.PathOutsideRoots):
                return "missing"
        if info.st_size != self.size_bytes:
            return f"{info.st_size} bytes on disk, not the {self.size_bytes} recorded"
        if self.file_mtime_ns is not None and info.st_mtime_ns != self.file_mtime_ns:
            return "modified after it was verified"
        return None

    def recheck(self, *, actor=None) -> bool:
        """Hash the file again; if it is byte for byte what was verified, accept its new mtime.

        Returns True when the export is whole again, False when its contents differ (freeze again).
        Audited either way.
        """
        import hashlib

        with open(files.open_regular_file(self.file_path()), "rb") as handle:
            info = os.fstat(handle.fileno())
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        same = info.st_size == self.size_bytes and digest.hexdigest() == self.sha256
        if same:
            self.file_mtime_ns = info.st_mtime_ns
            self.save(update_fields=["file_mtime_ns"])
        AuditEvent.record(
            "export_recheck",
            f"Export #{self.pk} ({self.display_name}.pb): "
            + ("contents unchanged, accepted again" if same else "contents changed on disk; refused until frozen again"),
            actor=actor, run=self.checkpoint.run, checkpoint=self.checkpoint,
            details={"sha256_on_disk": digest.hexdigest(), "size_on_disk": info.st_size},
        )
        return same

    def download_filename(self) -> str:
        """``<run>-step<step>-<name>.pb``: chosen by the server, never taken from the request."""
        import re

        step = f"step{self.checkpoint.step}" if self.checkpoint.step is not None else "nostep"
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{self.checkpoint.run.name}-{step}-{self.display_name}")
        return f"{name.strip('_') or 'export'}.pb"

    def as_json(self) -> dict:
        """What ``manage.py freeze --json`` prints (and a freeze job stores) for the export."""
        return {
            "id": self.pk, "path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes,
            "outputs": self.outputs, "max_abs_diff": self.max_abs_diff, "verified": self.verified,
        }


class Job(models.Model):
    SCAN, SAVE, RESTORE, FREEZE, PRUNE, COMPARE = "scan", "save", "restore", "freeze", "prune", "compare"
    KIND_CHOICES = [(k, k) for k in (SCAN, SAVE, RESTORE, FREEZE, PRUNE, COMPARE)]
    QUEUED, RUNNING, FINISHED, FAILED, CANCELED = "queued", "running", "finished", "failed", "canceled"
    STATUS_CHOICES = [(s, s) for s in (QUEUED, RUNNING, FINISHED, FAILED, CANCELED)]
    ENDED = (FINISHED, FAILED, CANCELED)

    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=QUEUED)
    run = models.ForeignKey(Run, null=True, blank=True, related_name="jobs", on_delete=models.SET_NULL)
    checkpoint = models.ForeignKey(
        Checkpoint, null=True, blank=True, related_name="jobs", on_delete=models.SET_NULL
    )
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    log = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True, db_index=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, related_name="retries", on_delete=models.SET_NULL)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"]), models.Index(fields=["kind", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("job", args=[self.pk])

    @property
    def is_ended(self) -> bool:
        return self.status in self.ENDED

    @property
    def can_cancel(self) -> bool:
        return self.status in (self.QUEUED, self.RUNNING)

    @property
    def can_retry(self) -> bool:
        return self.status in (self.FAILED, self.CANCELED)

    class AlreadyRetried(ValueError):
        """This job has a retry already; only the newest attempt of a chain may be retried."""

        def __init__(self, job: Job, newest: Job):
            super().__init__(
                f"Job #{job.pk} was already retried as job #{newest.pk} ({newest.status}). "
                + (
                    f"Retry job #{newest.pk} instead."
                    if newest.can_retry
                    else "A job is retried at most once; retry the newest attempt if it fails."
                )
            )
            self.job, self.newest = job, newest


class Comparison(models.Model):
    """A stored variable-by-variable comparison of two checkpoints (computed once by a job)."""

    a = models.ForeignKey(Checkpoint, related_name="comparisons_as_a", on_delete=models.CASCADE)
    b = models.ForeignKey(Checkpoint, related_name="comparisons_as_b", on_delete=models.CASCADE)
    job = models.ForeignKey(Job, null=True, blank=True, related_name="comparisons", on_delete=models.SET_NULL)
    # The fingerprints compared: a rewritten checkpoint makes a stored comparison stale.
    fingerprint_a = models.CharField(max_length=64, blank=True)
    fingerprint_b = models.CharField(max_length=64, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    variables = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["a", "b"], name="unique_comparison_pair")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.a} vs {self.b}"

    class CannotCompare(Exception):
        """The pair cannot be compared (files gone, unreadable, outside the roots); the message says why."""

    # Besides values that moved, these notes count as "changed" for the changed-only filter.
    STRUCTURAL_NOTES = ("only in A", "only in B", "shape changed", "dtype changed")
    # Step over step only: why a heatmap cell has no value although the engine gave no note.
    NOTE_NOT_FINITE, NOTE_ABSENT = "NaN or Inf", "absent"
    SORT_KEYS = ("name", "relative_change", "l2_a", "l2_b", "l2_diff", "max_abs_diff", "cosine")
    DEFAULT_SORT = "-relative_change"

    def get_absolute_url(self) -> str:
        return f"{reverse('compare')}?a={self.a_id}&b={self.b_id}"

    @property
    def is_fresh(self) -> bool:
        """Both checkpoints still carry the fingerprints that were compared (nothing rewritten since)."""
        return self.fingerprint_a == self.a.fingerprint and self.fingerprint_b == self.b.fingerprint

    @classmethod
    def for_pair(cls, a: Checkpoint, b: Checkpoint) -> Comparison | None:
        """The stored comparison of A with B if it is still fresh, else None (compute it again)."""
        found = cls.objects.filter(a=a, b=b).select_related("job").first()
        if found is None:
            return None
        found.a, found.b = a, b  # the caller's rows carry the current fingerprints
        return found if found.is_fresh else None

    @classmethod
    def jobs_for_pair(cls, a: Checkpoint, b: Checkpoint) -> models.QuerySet[Job]:
        """Compare jobs asked for exactly this pair, newest first."""
        return Job.objects.filter(kind=Job.COMPARE, params__a=a.pk, params__b=b.pk).order_by("-created_at")

    @classmethod
    def compute(cls, a: Checkpoint, b: Checkpoint, *, job: Job | None = None, on_progress=None) -> Comparison:
        """Compare A with B now and store the result: the one code path of the compare job and command.

        Reads both checkpoints through TensorFlow (the engine imports it lazily), so call this from a
        worker or a management command, never from a view. Raises ``Comparison.CannotCompare`` with
        a message fit for users; an exception raised by ``on_progress`` (a cancel) propagates as is.
        """
        from persistence import compare as engine

        for side in (a, b):
            if not side.on_disk:
                raise cls.CannotCompare(f"checkpoint #{side.pk} ({side}) is {side.status}: its files are gone")
            try:
                checkpoint_directory(side.run.directory)  # the root list may have changed since
                side.check_files_at_use()
            except ValueError as exc:
                raise cls.CannotCompare(f"run {side.run.name}: {exc}") from None
        # Recorded before reading: a rescan that changes a fingerprint meanwhile makes this stale.
        fingerprint_a, fingerprint_b = a.fingerprint, b.fingerprint
        started = timezone.now()
        try:
            result = engine.compare_checkpoints(a.path, b.path, on_progress=on_progress)
        except Exception as exc:
            message = cls.read_error_message(exc)
            if message is None:
                raise
            raise cls.CannotCompare(message) from exc
        summary = {
            **result.summary,
            "step_a": a.step,
            "step_b": b.step,
            "step_delta": b.step - a.step if a.step is not None and b.step is not None else None,
            "size_a": a.size_bytes,
            "size_b": b.size_bytes,
            "size_delta": b.size_bytes - a.size_bytes,
            "saved_at_a": a.saved_at.isoformat(),
            "saved_at_b": b.saved_at.isoformat(),
            "seconds_delta": (b.saved_at - a.saved_at).total_seconds(),
            "elapsed_seconds": round((timezone.now() - started).total_seconds(), 3),
        }
        comparison, _ = cls.objects.update_or_create(
            a=a,
            b=b,
            defaults={
                "job": job,
                "fingerprint_a": fingerprint_a,
                "fingerprint_b": fingerprint_b,
                "summary": summary,
                "variables": [v.to_dict() for v in result.variables],
                "metrics": engine.metric_deltas(a.metrics or {}, b.metrics or {}),
                "created_at": timezone.now(),
            },
        )
        return comparison

    @staticmethod
    def read_error_message(exc: BaseException) -> str | None:
        """A user-facing message for a checkpoint that could not be read, or None for other errors."""
        from persistence.errors import CheckpointReadError

        # The engine raises this for TensorFlow's read errors too (CorruptCheckpoint for bad bytes).
        if isinstance(exc, CheckpointReadError):
            return str(exc)
        return None

    def as_json(self) -> dict:
        """What ``manage.py compare --json`` prints."""
        return {
            "a": self.a.reference(),
            "b": self.b.reference(),
            "variables": self.variables,
            "metrics": self.metrics,
            "summary": self.summary,
            "computed_at": self.created_at.isoformat(),
        }

    def rows(self, *, changed_only: bool = False, contains: str = "", sort: str = DEFAULT_SORT) -> list[dict]:
        """Variables filtered and sorted for the table; rows without the sort value go last.

        Sorting by relative change puts changed variables whose change has no finite ratio (A all
        zeros, NaN/Inf appeared) first when descending: "did anything blow up" is the question.
        """
        key = sort.lstrip("-")
        descending = sort.startswith("-")
        if key not in self.SORT_KEYS:
            key, descending = self.DEFAULT_SORT.lstrip("-"), True
        needle = contains.strip().lower()
        rows = [
            r for r in sorted(self.variables, key=lambda r: r["name"])
            if (not changed_only or r.get("changed") or r.get("note") in self.STRUCTURAL_NOTES)
            and needle in r["name"].lower()
        ]

        def value(row: dict):
            v = row.get(key)
            if v is None and key == "relative_change" and row.get("changed"):
                return float("inf")
            return v

        with_value = [r for r in rows if value(r) is not None]
        with_value.sort(key=value, reverse=descending)
        return with_value + [r for r in rows if value(r) is None]


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=50)
    run = models.ForeignKey(Run, null=True, blank=True, related_name="audit_events", on_delete=models.SET_NULL)
    checkpoint = models.ForeignKey(Checkpoint, null=True, blank=True, on_delete=models.SET_NULL)
    summary = models.CharField(max_length=500)
    bytes_freed = models.BigIntegerField(default=0)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action}: {self.summary}"

    @classmethod
    def record(cls, action: str, summary: str, *, actor=None, run=None, checkpoint=None,
               bytes_freed: int = 0, details: dict | None = None) -> AuditEvent:
        return cls.objects.create(
            action=action, summary=summary, actor=actor if getattr(actor, "is_authenticated", False) else None,
            run=run, checkpoint=checkpoint, bytes_freed=bytes_freed, details=details or {},
        )


def temp_owner_ended(owner: str) -> bool | None:
    """Whether the writer named in a temporary file (``job<pk>``) has ended; None for other names."""
    if not owner.startswith("job") or not owner[3:].isdigit():
        return None
    status = Job.objects.filter(pk=int(owner[3:])).values_list("status", flat=True).first()
    return status is None or status in Job.ENDED


def _shown(value) -> str:
    return "—" if value in (None, "") else str(value)


def _process_start(pid: int) -> str | None:
    # The start time (clock ticks since boot) tells a process from a later one that reused its pid.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_process() -> dict:
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _process_alive(holder: dict) -> bool | None:
    """Whether the process in ``holder`` still runs: True/False on this machine, None elsewhere."""
    import socket

    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("started")
    return started is None or _process_start(pid) == started


def _unfinished_plan(job: Job) -> Job | None:
    """The earlier attempt of this prune (its ``retry_of`` chain) that recorded a plan and did not finish it."""
    seen, current = set(), job.retry_of
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        result = current.result or {}
        if "execution" in result:
            return None  # that attempt finished its plan: this retry plans afresh
        if "plan" in result:
            return current
        current = current.retry_of
    return None
