"""Scale: the pages with 1,000 runs and 1,000,000 checkpoint rows (best on PostgreSQL: ``DATABASE_URL``).

The data set is inserted directly (``Checkpoint.objects.insert_many``: COPY on PostgreSQL), the way
a long-lived deployment accumulates it: 1,000 runs, one of 100,000 checkpoints, 1,000,000 rows in
all, 50 metrics per checkpoint on 10 runs, 10,000 jobs and 5,000 exports. No files: these figures
are about the database and the pages, not discovery.

Each page is requested 20 times in-process through Django's test client (no HTTP, one process),
after one warm-up request; the median server time is the figure. Queries per page are counted
once. Not measured here: concurrency (see a load generator against gunicorn), a cold database.
"""

from __future__ import annotations

import datetime as dt
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


def _page_ms(client, url: str) -> tuple[float, int]:
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
    return statistics.median(times), len(ctx.captured_queries)


def run(work: Path) -> dict[str, dict]:
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections, connection
    from django.test import Client

    from dashboard.models import Checkpoint, Run

    made = make_dataset(work)
    # As a server in service keeps its connection (and the query log must survive requests).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    client = Client()
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username="bench-scale"))
    big = Run.objects.get(name="big")
    checkpoint = big.checkpoints.order_by("-step").first()
    middle = BIG // 50 // 2  # the history page in the middle of the run (50 rows a page)
    pages = {
        "runs_list": ("/", 50),
        "history_first": ("/runs/big/", 50),
        "history_middle": (f"/runs/big/?page={middle}", 50),
        "history_by_size": ("/runs/big/?sort=-size", 50),
        "checkpoint_page": (checkpoint.get_absolute_url(), 30),
        "jobs_list": ("/jobs/", 50),
        "exports_list": ("/exports/", 50),
    }
    results = {}
    for name, (url, target) in pages.items():
        ms, queries = _page_ms(client, url)
        results[f"page_{name}_ms"] = entry(ms, None, "ms", f"value <= {target}", url=url, queries=queries,
                                           requests=REQUESTS, database=connection.vendor,
                                           checkpoints=made["checkpoints"])
    results["scale_dataset_seconds"] = entry(made["seconds"], None, "s", "value <= 600",
                                             checkpoints=Checkpoint.objects.count(), database=connection.vendor)
    return results
