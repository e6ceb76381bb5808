"""The cached per-run summary and the metric rows the history sorts by.

Pages read ``RunSummary`` (one row per run) instead of aggregating a run's checkpoint rows per
view, and sort by a metric through ``MetricValue`` rows in index order. Both are written by the
operations that change checkpoint rows, in the same transaction (scan, a save job's record,
prune, verify, metrics attached from event files): call ``refresh`` there, and
``record_metric_values`` wherever ``Checkpoint.metrics`` is written. ``rebuild`` recomputes both
from the rows (``manage.py rebuild_summaries``), for data written around these paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from django.db import connection, transaction
from django.db.models import Count, Max, Q, QuerySet, Sum

from .models import Checkpoint, MetricValue, Run, RunSummary


def aggregate(run_id: int) -> dict:
    """The summary's fields, computed from the run's checkpoint rows (one grouped query)."""
    return _fold(_groups(Checkpoint.objects.filter(run_id=run_id)))


def _groups(checkpoints: QuerySet, *by: str) -> QuerySet:
    """Counts and extremes of ``checkpoints`` grouped by ``by`` and status."""
    return (
        checkpoints.order_by().values(*by, "status")
        .annotate(n=Count("id"), size=Sum("size_bytes"), top_step=Max("step"), recorded=Max("recorded_at"),
                  saved=Max("saved_at"), stepless=Count("id", filter=Q(step__isnull=True)))
    )


def _fold(groups: Iterable[dict]) -> dict:
    """The summary's fields from one run's status groups."""
    values: dict = {
        "checkpoint_count": 0, "on_disk_count": 0, "on_disk_bytes": 0, "latest_step": None,
        "last_recorded": None, "last_activity": None, "status_counts": {}, "stepless_count": 0,
    }
    for group in groups:
        values["status_counts"][group["status"]] = group["n"]
        values["checkpoint_count"] += group["n"]
        values["stepless_count"] += group["stepless"]
        values["last_activity"] = _max(values["last_activity"], group["saved"])
        if group["status"] not in Checkpoint.GONE:
            values["on_disk_count"] += group["n"]
            values["on_disk_bytes"] += group["size"] or 0
            values["latest_step"] = _max(values["latest_step"], group["top_step"])
            values["last_recorded"] = _max(values["last_recorded"], group["recorded"])
    return values


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def refresh(run: Run | int) -> RunSummary:
    """Recompute one run's summary from its rows; call inside the transaction that changed them.

    One grouped aggregate over the run's rows (by the ``(run, status)`` index): writers pay it
    once per transaction so that readers never do.
    """
    run_id = run if isinstance(run, int) else run.pk
    with transaction.atomic():
        # The row lock first, the aggregate after it: of two writers changing rows of one run at
        # once, the second to take the lock reads the first's committed rows too, so the summary
        # written last counts both.
        summary, _ = RunSummary.objects.select_for_update().get_or_create(run_id=run_id)
        values = aggregate(run_id)
        RunSummary.objects.filter(pk=run_id).update(**values)
    for name, value in values.items():
        setattr(summary, name, value)
    return summary


def for_run(run: Run, *, compute: bool = True) -> RunSummary:
    """The run's summary row, computed and stored the first time it is asked for (a run whose rows
    arrived around the operations: restored from a backup, inserted by a script); without
    ``compute``, an empty one (not stored) stands in for it."""
    try:
        return run.summary
    except RunSummary.DoesNotExist:
        if not compute:
            return RunSummary(run=run)
        run.summary = refresh(run)
        return run.summary


def _metric_rows(run_id: int, pk: int, metrics: dict | None) -> Iterable[MetricValue]:
    for name, value in (metrics or {}).items():
        # Numbers only (a bool is an int to Python, not a metric); JSON holds no NaN, neither do we.
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield MetricValue(run_id=run_id, checkpoint_id=pk, name=name[:255], value=float(value))


def record_metric_values(run_id: int, rows: list[tuple[int, dict | None]]) -> None:
    """Make the ``MetricValue`` rows of these checkpoints ``(pk, metrics)`` what their metrics say."""
    if not rows:
        return
    pks = [pk for pk, _ in rows]
    for start in range(0, len(pks), 5000):
        MetricValue.objects.filter(checkpoint_id__in=pks[start : start + 5000]).delete()
    MetricValue.objects.bulk_create(
        (v for pk, metrics in rows for v in _metric_rows(run_id, pk, metrics)), batch_size=5000
    )


def rebuild_metric_values(run_id: int | None = None) -> None:
    """Recompute ``MetricValue`` rows from ``Checkpoint.metrics`` in the database itself (both
    PostgreSQL and SQLite expand JSON objects in SQL: no row travels to Python)."""
    table = connection.ops.quote_name(Checkpoint._meta.db_table)
    target = connection.ops.quote_name(MetricValue._meta.db_table)
    where, params = ("AND c.run_id = %s", [run_id]) if run_id is not None else ("", [])
    if connection.vendor == "postgresql":
        select = (f"SELECT c.run_id, c.id, left(j.key, 255), (j.value #>> '{{}}')::float8 FROM {table} c, "
                  f"jsonb_each(c.metrics) j WHERE jsonb_typeof(j.value) = 'number' {where}")
    else:
        select = (f"SELECT c.run_id, c.id, substr(j.key, 1, 255), j.value FROM {table} c, json_each(c.metrics) j "
                  f"WHERE j.type IN ('integer', 'real') {where}")
    insert = f"INSERT INTO {target} (run_id, checkpoint_id, name, value) {select}"
    with transaction.atomic():
        if run_id is None and connection.vendor == "postgresql":
            _reload_without_constraints(insert)
            return
        stale = MetricValue.objects.all() if run_id is None else MetricValue.objects.filter(run_id=run_id)
        stale.delete()
        with connection.cursor() as cursor:
            cursor.execute(insert, params)


def _reload_without_constraints(insert: str) -> None:
    """Empty the metric table and fill it with ``insert`` with its indexes and constraints set
    aside, then put them back as they were (same names, same definitions).

    Millions of rows inserted one index entry and two deferred foreign-key checks at a time took
    minutes; building each index by one sort and checking each key by one join takes seconds.
    The price: the table is locked (readers of the metric sort wait) until the transaction ends.
    """
    relation = MetricValue._meta.db_table
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('u', 'f', 'c', 'x') ORDER BY contype DESC, conname",
            [quote(relation)],
        )
        constraints = cursor.fetchall()
        cursor.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND NOT i.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname",
            [quote(relation)],
        )
        indexes = cursor.fetchall()
        # Foreign-key checks of this transaction's earlier writes, still queued (Django's keys are
        # deferred to the commit), would keep the tables from being altered: run them now.
        connection.check_constraints()
        for name, _, _ in constraints:
            cursor.execute(f"ALTER TABLE {quote(relation)} DROP CONSTRAINT {quote(name)}")
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {quote(name)}")
        cursor.execute(f"TRUNCATE {quote(relation)}")
        cursor.execute(insert)
        for _, definition in indexes:
            cursor.execute(definition)
        for name, definition, _ in reversed(constraints):
            cursor.execute(f"ALTER TABLE {quote(relation)} ADD CONSTRAINT {quote(name)} {definition}")


def rebuild(runs: Iterable[Run] | None = None) -> int:
    """Recompute the summary and metric rows of ``runs`` (every run by default); return how many."""
    if runs is None:
        with transaction.atomic():
            rebuild_metric_values()
            return _refresh_all()
    done = 0
    for run in runs:
        with transaction.atomic():
            rebuild_metric_values(run.pk)
            refresh(run.pk)
        done += 1
    return done


def _refresh_all() -> int:
    """``refresh`` of every run at once: one grouped query over all rows and one transaction,
    where a thousand runs one by one spent most of their time committing.

    The same order as ``refresh``: every summary row exists and is locked first, the rows are
    aggregated after, so a writer refreshing a run meanwhile waits and then counts its own rows.
    """
    run_ids = list(Run.objects.order_by("pk").values_list("pk", flat=True))
    RunSummary.objects.bulk_create([RunSummary(run_id=pk) for pk in run_ids], ignore_conflicts=True)
    list(RunSummary.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    by_run: dict[int, list[dict]] = {}
    for group in _groups(Checkpoint.objects.all(), "run_id"):
        by_run.setdefault(group["run_id"], []).append(group)
    summaries = [RunSummary(run_id=pk, **_fold(by_run.get(pk, ()))) for pk in run_ids]
    fields = [f.name for f in RunSummary._meta.concrete_fields if not f.primary_key]
    RunSummary.objects.bulk_update(summaries, fields, batch_size=500)
    return len(run_ids)
