"""Scale: the pages with 1,000 runs and 1,000,000 checkpoint rows (best on PostgreSQL: ``DATABASE_URL``).

The data set is inserted directly (``Checkpoint.objects.insert_many``: COPY on PostgreSQL), the way
a long-lived deployment accumulates it: 1,000 runs, one of 100,000 checkpoints, 1,000,000 rows in
all, 50 metrics per checkpoint on 10 runs, 10,000 jobs and 5,000 exports. No files: these figures
are about the database and the pages, not discovery.

Each page is requested 20 times in-process through Django's test client (no HTTP, one process),
after one warm-up request; the median server time is the figure, with the spread (min, max).
Queries per page are counted once. The history pages are the 100,000-checkpoint run's: the first
page, a page in the middle (reached by its cursor, as the Next links reach it), by size, and by a
metric (first page and a middle one). The rows are inserted around the dashboard's operations, so
the cached run summaries and metric sort rows are rebuilt from them (``summaries.rebuild``, timed
as ``scale_summary_rebuild_seconds``). On PostgreSQL, ``EXPLAIN ANALYZE`` of each history page's
slice query is printed (and written to ``explain.txt`` in the work directory).

Not measured here: concurrency (see a load generator against gunicorn), a cold database.
Smaller data sets for a smoke run: ``BENCH_SCALE_RUNS``, ``BENCH_SCALE_BIG``, ``BENCH_SCALE_TOTAL``.
A data set already in the database (a run named ``big``) is reused, not inserted again.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from pathlib import Path

from bench.harness import entry

RUNS = 1_000
BIG = 100_000
TOTAL = 1_000_000
METRIC_RUNS = 10
METRICS = 50
JOBS = 10_000
EXPORTS = 5_000
REQUESTS = 20


def make_dataset(work: Path, *, runs: int = RUNS, big: int = BIG, total: int = TOTAL) -> dict:
    from django.contrib.auth.models import User

    from dashboard.models import Checkpoint, Export, Job, Run

    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    started = time.perf_counter()
    run_rows = Run.objects.bulk_create(
        Run(name=f"run-{i:04d}" if i else "big", directory=str(work / "checkpoints" / f"run-{i:04d}"))
        for i in range(runs)
    )
    per_run = (total - big) // max(1, runs - 1)
    metric_names = [f"metric_{m:02d}" for m in range(METRICS)]
    for index, run in enumerate(run_rows):
        n = big if index == 0 else per_run
        with_metrics = index < METRIC_RUNS
        rows = []
        for step in range(1, n + 1):
            metrics = ({name: (step % 97) / (m + 1) for m, name in enumerate(metric_names)} if with_metrics
                       else {"loss": 1.0 / step})
            rows.append({
                "run_id": run.pk, "prefix": f"model.ckpt-{step}", "step": step,
                "saved_at": base + dt.timedelta(seconds=step), "size_bytes": 4096 + step,
                "files": [{"name": f"model.ckpt-{step}.index", "size": 100}], "metrics": metrics,
                "status": Checkpoint.PRUNED if step < n // 3 else Checkpoint.PRESENT,
            })
        Checkpoint.objects.insert_many(rows)
    checkpoints = list(Checkpoint.objects.filter(run=run_rows[0]).order_by("-step").values_list("pk", flat=True)[:EXPORTS])
    Export.objects.bulk_create(
        (Export(checkpoint_id=pk, path=str(work / "exports" / f"{pk}.pb"), sha256="0" * 64, size_bytes=1000,
                verified=True) for pk in checkpoints),
        batch_size=5000,
    )
    Job.objects.bulk_create(
        (Job(kind=Job.SCAN, status=Job.FINISHED, run=run_rows[i % runs], progress=100) for i in range(JOBS)),
        batch_size=5000,
    )
    User.objects.create_superuser("bench-scale", password="bench-only")
    return {"seconds": time.perf_counter() - started, "checkpoints": Checkpoint.objects.count()}


def _page_ms(client, url: str) -> tuple[float, list[float], list[str]]:
    """The median server time of ``url`` in ms, every time, and the SQL of one request."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}")
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    reset_queries()
    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    return statistics.median(times), times, [q["sql"] for q in ctx.captured_queries]


def _explain(queries: list[str]) -> str:
    """``EXPLAIN ANALYZE`` of a history page's slice: its query of checkpoint (or metric) rows."""
    from django.db import connection

    slice_sql = next(q for q in queries if "LIMIT 51" in q)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slice_sql)
        return slice_sql + "\n" + "\n".join(row[0] for row in cursor.fetchall())


def _middle_cursors() -> tuple[str, str]:
    """Cursors of the rows in the middle of the big run's history: by step, and by a metric (read
    once here with OFFSET; the pages themselves reach them by cursor)."""
    from dashboard.models import MetricValue, Run
    from dashboard.views.paging import FLOAT, INT, Order
    from dashboard.views.runs import HISTORY_SORTS

    big = Run.objects.get(name="big")
    count = big.checkpoints.count()
    row = big.checkpoints.filter(step__isnull=False).order_by("-step", "-saved_at", "-id")[count // 2]
    by_step = HISTORY_SORTS["-step"].encode(row)
    values = MetricValue.objects.filter(run=big, name=METRIC).order_by("-value", "-checkpoint_id")
    value = values[values.count() // 2]
    by_metric = Order(f"-metric:{METRIC}", ("value", "checkpoint_id"), (FLOAT, INT), descending=True).encode(value)
    return by_step, by_metric


METRIC = "metric_07"


def run(work: Path) -> dict[str, dict]:
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections, connection
    from django.test import Client

    from dashboard import summaries
    from dashboard.models import Checkpoint, Run

    rebuild_seconds = None
    if Run.objects.filter(name="big").exists():
        made = {"seconds": None, "checkpoints": Checkpoint.objects.count()}
    else:
        made = make_dataset(work, runs=int(os.environ.get("BENCH_SCALE_RUNS", RUNS)),
                            big=int(os.environ.get("BENCH_SCALE_BIG", BIG)),
                            total=int(os.environ.get("BENCH_SCALE_TOTAL", TOTAL)))
        started = time.perf_counter()
        summaries.rebuild()
        rebuild_seconds = time.perf_counter() - started
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")  # what autovacuum does after a bulk load, before the pages are timed
    # As a server in service keeps its connection (and the query log must survive requests).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    client = Client()
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username="bench-scale"))
    big = Run.objects.get(name="big")
    checkpoint = big.checkpoints.order_by("-step").first()
    by_step, by_metric = _middle_cursors()
    pages = {
        "runs_list": ("/", 50),
        "history_first": ("/runs/big/", 50),
        "history_middle": (f"/runs/big/?after={by_step}", 50),
        "history_by_size": ("/runs/big/?sort=-size", 50),
        "history_by_metric": (f"/runs/big/?sort=-metric:{METRIC}", 50),
        "history_by_metric_middle": (f"/runs/big/?sort=-metric:{METRIC}&after={by_metric}", 50),
        "checkpoint_page": (checkpoint.get_absolute_url(), 30),
        "jobs_list": ("/jobs/", 50),
        "exports_list": ("/exports/", 50),
    }
    results, plans = {}, []
    for name, (url, target) in pages.items():
        ms, times, queries = _page_ms(client, url)
        results[f"page_{name}_ms"] = entry(ms, None, "ms", f"value <= {target}", url=url, queries=len(queries),
                                           requests=REQUESTS, min_ms=min(times), max_ms=max(times),
                                           database=connection.vendor, checkpoints=made["checkpoints"])
        if name.startswith("history") and connection.vendor == "postgresql":
            plans.append(f"== {name}: {url}\n{_explain(queries)}\n")
    if plans:
        (work / "explain.txt").write_text("\n".join(plans))
        print("\n".join(plans))
    if made["seconds"] is not None:
        results["scale_dataset_seconds"] = entry(made["seconds"], None, "s", "value <= 600",
                                                 checkpoints=Checkpoint.objects.count(), database=connection.vendor)
    if rebuild_seconds is not None:
        results["scale_summary_rebuild_seconds"] = entry(rebuild_seconds, None, "s", "value <= 600",
                                                         checkpoints=made["checkpoints"], database=connection.vendor)
    return results
