"""The periodic sweep over 1,000 unchanged runs: ``sweep_1000_idle_cpu_seconds``.

1,000 tracked runs (``BENCH_SWEEP_RUNS``), each a real directory: ten hold real tiny checkpoints
(five each, recorded by a real scan), the others hold checkpoint rows inserted directly (ten each,
as a long-lived deployment has them) and a directory stamp as their last scan left it. Nothing
changes between sweeps, which is what most runs of a deployment look like most of the time.

Measured: ``jobs.scan_all_runs()``, the function RQ's cron hands to a worker, called in this
process as the worker's work horse calls it, after one warm-up sweep; its CPU time (user + system
of this process and of any child it waits for, from ``getrusage``) is the figure, median of
``REPEAT`` sweeps, every one recorded. Its wall time is recorded beside it. Baseline, in the same
run: what the least a careful engineer's sweep must do: ``os.stat`` each run's directory (to see
whether anything changed) and one bulk ``UPDATE`` of ``last_scanned_at``.

Not measured: the database server's own CPU (on PostgreSQL a separate process; on SQLite it is
in-process and counted), RQ's fork of the work horse and its bookkeeping (one job per sweep),
runs that changed (each gets a scan job of its own: see ``scan_vs_bare`` for what that costs).
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import statistics
import time
from pathlib import Path

from bench.harness import entry

RUNS = int(os.environ.get("BENCH_SWEEP_RUNS", "1000"))
REAL = 10
ROWS = 10
REPEAT = 5


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make_runs(root: Path, runs: int = RUNS) -> None:
    from dashboard import scanning
    from dashboard.models import Checkpoint, Run
    from persistence import discovery
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    real = []
    for i in range(runs):
        directory = root / f"idle-{i:04d}"
        if i < REAL:
            make_many_tiny_checkpoints(directory, 5)
            real.append(directory)
        else:
            directory.mkdir(parents=True)
    made = Run.objects.bulk_create(Run(name=f"idle-{i:04d}", directory=str(root / f"idle-{i:04d}"))
                                   for i in range(runs))
    rows = [
        {"run_id": run.pk, "prefix": f"model.ckpt-{step}", "step": step, "saved_at": base + dt.timedelta(seconds=step),
         "size_bytes": 4096, "files": [{"name": f"model.ckpt-{step}.index", "size": 100}], "metrics": {}}
        for run in made[REAL:] for step in range(1, ROWS + 1)
    ]
    Checkpoint.objects.insert_many(rows)
    time.sleep(1.2)  # a directory changed within the last second never counts as unchanged
    for run in made[:REAL]:
        scanning.scan(run)
    for run in made[REAL:]:
        Run.objects.filter(pk=run.pk).update(directory_stamp=discovery.directory_stamp(run.directory))


def bare_sweep() -> None:
    from django.utils import timezone

    from dashboard.models import Run

    for directory in Run.objects.values_list("directory", flat=True):
        os.stat(directory)
    Run.objects.update(last_scanned_at=timezone.now())


def run(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    from django.db import connection

    from dashboard import jobs
    from dashboard.models import Job

    root = work / "checkpoints" / "sweep"
    root.mkdir(parents=True, exist_ok=True)
    make_runs(root)
    summary = jobs.scan_all_runs()  # warm-up (queries compiled, directories in the dentry cache)
    idle = sum(1 for result in summary.values() if result.get("unchanged_directory"))
    if idle != RUNS or Job.objects.exists():
        raise RuntimeError(f"expected {RUNS} idle runs and no job, got {idle} and {Job.objects.count()} jobs")
    ours, ours_wall, bare = [], [], []
    for _ in range(repeat):
        cpu, wall = _cpu(), time.perf_counter()
        jobs.scan_all_runs()
        ours.append(_cpu() - cpu)
        ours_wall.append(time.perf_counter() - wall)
        cpu = _cpu()
        bare_sweep()
        bare.append(_cpu() - cpu)
    return {
        "sweep_1000_idle_cpu_seconds": entry(
            statistics.median(ours), statistics.median(bare), "s", "value <= 5", runs=RUNS,
            runs_with_real_checkpoints=REAL, repeat=repeat, statistic="median CPU seconds of the sweeping process",
            value_spread=[round(v, 3) for v in ours], wall_seconds=[round(v, 3) for v in ours_wall],
            baseline_spread=[round(v, 3) for v in bare], database=connection.vendor,
            load_average=round(os.getloadavg()[0], 2),
        ),
    }
