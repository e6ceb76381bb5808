"""Job benchmarks: ``job_overhead_seconds``.

The extra wall time a tiny save job spends going through the queue (enqueue → our ``Job`` row
``finished``, with a warm worker already running) over the same TensorFlow calls in a bare script.
The bare script is timed the way the work horse runs: TensorFlow already imported (the
preloading worker imports it once, before forking), then the calls once, in a fresh process.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.harness import entry

BASE_DIR = Path(__file__).resolve().parent.parent
REPEAT = 9
STEPS, SAVE_EVERY = 4, 2  # two checkpoints: a save job's whole path, twice, on the smallest real model
RECIPE = "persistence.recipes.antispam.AntiSpamRecipe"

BARE_SCRIPT = f"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow  # noqa: F401  (not timed: the preloading worker has it imported before the fork)
from persistence.recipes.antispam import AntiSpamRecipe
from persistence.training import SaverOptions, train
start = time.perf_counter()
train(sys.argv[1], AntiSpamRecipe(), steps={STEPS}, save_every={SAVE_EVERY}, options=SaverOptions(max_to_keep=None))
print(json.dumps(time.perf_counter() - start))
"""


def bare_once(directory: Path) -> float:
    directory.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", BARE_SCRIPT, str(directory)], cwd=BASE_DIR, capture_output=True, text=True,
        check=True, env={**os.environ, "PYTHONPATH": str(BASE_DIR)},
    )
    return float(done.stdout.strip().splitlines()[-1])


def _phases() -> dict[str, float]:
    """Median time from enqueue to the body starting, and of the body itself (from our rows)."""
    from dashboard.models import Job

    rows = list(Job.objects.filter(status=Job.FINISHED).order_by("pk")[1:])  # without the warm-up
    return {
        "enqueue_to_start": statistics.median((j.started_at - j.created_at).total_seconds() for j in rows),
        "body": statistics.median((j.ended_at - j.started_at).total_seconds() for j in rows),
    }


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return os.environ["DATABASE_URL"]


def run(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    from django.conf import settings

    from dashboard import jobs
    from dashboard.localredis import PrivateRedis
    from dashboard.models import Job, Run

    private = None
    if not os.environ.get("REDIS_URL"):
        private = PrivateRedis(settings.VAR_DIR / "redis.sock").start()
    # A queue of its own: a development worker on the same Redis must not take these jobs.
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    settings.JOB_QUEUE = queue
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, queue: {**settings.RQ_QUEUES["default"]}}
    env = {
        **os.environ, "JOB_QUEUE": queue, "REDIS_URL": settings.REDIS_URL, "DATABASE_URL": _database_url(),
        "CHECKPOINT_ROOTS": os.pathsep.join(str(r) for r in settings.CHECKPOINT_ROOTS),
        "TF_CPP_MIN_LOG_LEVEL": "2", "SCAN_INTERVAL_SECONDS": "0",
    }
    log = open(work / "worker.log", "wb")  # noqa: SIM115 - closed with the worker below
    worker = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "rqworker", queue,
         "--worker-class", "dashboard.worker.PreloadingWorker"],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    root = Path(settings.CHECKPOINT_ROOTS[0])
    params = {
        "recipe": RECIPE, "steps": STEPS, "save_every": SAVE_EVERY, "start_step": 0, "target_step": STEPS,
        "options": {"prefix": "model.ckpt", "max_to_keep": None, "keep_checkpoint_every_n_hours": 10000.0,
                    "write_meta_graph": "always", "var_list": None, "latest_filename": None,
                    "save_relative_paths": False},
    }

    def through_queue(i: int) -> float:
        directory = root / f"queued-{i}"
        directory.mkdir()
        run_row = Run.objects.create(name=f"queued-{i}", directory=str(directory))
        started = time.perf_counter()
        job = jobs.start(Job.SAVE, run=run_row, params=params)
        ended = Job.objects.filter(pk=job.pk, status__in=Job.ENDED)
        while not ended.exists():
            if worker.poll() is not None or time.perf_counter() - started > 120:
                tail = (work / "worker.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"job #{job.pk} did not finish (worker exit {worker.poll()}):\n{tail}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        job.refresh_from_db()
        if job.status != Job.FINISHED:
            raise RuntimeError(f"job #{job.pk} {job.status}: {job.error}")
        return elapsed

    queued, bare = [], []
    try:
        through_queue(-1)  # warm: the worker has started and imported TensorFlow
        # Interleaved, so that both sides see the same background load on a shared machine.
        for i in range(repeat):
            queued.append(through_queue(i))
            bare.append(bare_once(work / "bare" / str(i)))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        if private is not None:
            private.stop()
    queue_median, bare_median = statistics.median(queued), statistics.median(bare)
    # Median of the paired differences: each pair ran back to back, under the same load.
    overhead = statistics.median(q - b for q, b in zip(queued, bare, strict=True))
    return {
        "job_overhead_seconds": entry(
            overhead, bare_median, "s", "value <= 0.5",
            through_queue_seconds=queue_median, repeats=repeat, steps=STEPS, checkpoints=STEPS // SAVE_EVERY,
            phases=_phases(),
        ),
    }
