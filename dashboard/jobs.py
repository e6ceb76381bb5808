"""Background jobs: thin functions that take ids, call ``persistence/`` and record on our ``Job`` row.

Our ``Job`` row is the truth the pages show; RQ's own records expire. Each RQ job is enqueued with
``job_id = "job-<pk>"`` so that either side can always find the other.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from redis.exceptions import RedisError

from .models import Job, Run

log = logging.getLogger(__name__)

# Explicit per kind: RQ's default of 180 s is far too short for a big freeze or a long training.
TIMEOUTS = {
    Job.SCAN: 30 * 60,
    Job.SAVE: 12 * 60 * 60,
    Job.RESTORE: 60 * 60,
    Job.FREEZE: 2 * 60 * 60,
    Job.PRUNE: 60 * 60,
    Job.COMPARE: 2 * 60 * 60,
}


class QueueUnavailable(Exception):
    """Redis could not be reached; the ``Job`` row exists and is enqueued once Redis is back."""

    def __init__(self, job: Job):
        super().__init__("The job queue is unavailable")
        self.job = job


def rq_job_id(job_pk: int) -> str:
    return f"job-{job_pk}"


def get_queue():
    import django_rq

    # Enqueue at once, not at the end of a surrounding transaction (django-rq's default): callers
    # commit the Job row first, and a Redis outage must surface here, where it can be reported.
    return django_rq.get_queue(settings.JOB_QUEUE, commit_mode="auto")


def enqueue(job: Job) -> None:
    """Hand an existing ``Job`` row to RQ. Raises ``RedisError`` when Redis is down."""
    func = JOB_FUNCTIONS[job.kind]
    get_queue().enqueue(
        func,
        job.pk,
        job_id=rq_job_id(job.pk),
        job_timeout=TIMEOUTS[job.kind],
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"{job.kind} #{job.pk}",
    )
    Job.objects.filter(pk=job.pk).update(rq_job_id=rq_job_id(job.pk))
    job.rq_job_id = rq_job_id(job.pk)


def start(kind: str, *, run: Run | None = None, checkpoint=None, params: dict | None = None, user=None) -> Job:
    """Create a ``Job`` row and enqueue it.

    When Redis is down the row stays ``queued`` with a message saying so, and
    ``QueueUnavailable`` is raised so the page can tell the user plainly; the reconciler
    enqueues it once Redis is back.
    """
    job = Job.objects.create(
        kind=kind,
        run=run,
        checkpoint=checkpoint,
        params=params or {},
        requested_by=user if getattr(user, "is_authenticated", False) else None,
    )
    try:
        enqueue(job)
    except RedisError as exc:
        log.warning("queue unavailable for job %s: %s", job.pk, exc)
        job.message = "Waiting for the job queue: it will start when the queue is reachable again."
        job.save(update_fields=["message"])
        raise QueueUnavailable(job) from exc
    return job


class JobContext:
    """What a running job body uses to report progress and to notice cancellation."""

    # Progress writes are throttled: a training loop may report thousands of times.
    MIN_INTERVAL = 0.5

    def __init__(self, job: Job):
        self.job = job
        self._last_write = 0.0
        self._last_cancel_check = 0.0

    def progress(self, percent: float, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.MIN_INTERVAL:
            return
        self._last_write = now
        pct = max(0, min(100, int(percent)))
        Job.objects.filter(pk=self.job.pk).update(progress=pct, message=message[:500])

    def log(self, line: str) -> None:
        self.job.log.append(f"{timezone.now():%H:%M:%S} {line}")
        Job.objects.filter(pk=self.job.pk).update(log=self.job.log)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check < 1.0:
            return False
        self._last_cancel_check = now
        return Job.objects.filter(pk=self.job.pk, status=Job.CANCELED).exists()


def job_body(func: Callable[[Job, JobContext], dict[str, Any] | None]) -> Callable[[int], dict]:
    """Wrap a job body: mark the row running, then finished with its result or failed with the error.

    The exception is re-raised so RQ records the failure as well.
    """

    @functools.wraps(func)
    def run(job_pk: int) -> dict:
        close_old_connections()
        job = Job.objects.get(pk=job_pk)
        if job.status == Job.CANCELED:
            return {"canceled": True}
        job.status, job.started_at, job.error, job.traceback = Job.RUNNING, timezone.now(), "", ""
        job.save(update_fields=["status", "started_at", "error", "traceback"])
        ctx = JobContext(job)
        try:
            result = func(job, ctx) or {}
        except Exception as exc:
            Job.objects.filter(pk=job_pk).update(
                status=Job.FAILED,
                error=f"{type(exc).__name__}: {exc}"[:5000],
                traceback=traceback.format_exc(),
                ended_at=timezone.now(),
            )
            raise
        # A cancel that arrived while the body was finishing keeps the canceled status.
        Job.objects.filter(pk=job_pk).exclude(status=Job.CANCELED).update(
            status=Job.FINISHED, progress=100, result=result, ended_at=timezone.now()
        )
        return result

    return run


@job_body
def scan_job(job: Job, ctx: JobContext) -> dict:
    run = Run.objects.get(pk=job.run_id)
    ctx.progress(5, f"Scanning {run.directory}", force=True)
    counts, result = run.scan()
    ctx.progress(100, f"{len(result.checkpoints)} checkpoints found", force=True)
    return {**counts, "checkpoints": len(result.checkpoints), "problems": result.problems}


def scan_all_runs() -> dict:
    """Periodic rescan of every tracked run (registered with RQ's cron in ``dashboard/cron.py``).

    Runs inline in one worker job rather than one job per run: rescans are incremental and cheap
    when nothing changed, and this keeps the queue readable.
    """
    close_old_connections()
    summary = {}
    for run in Run.objects.all():
        try:
            counts, _ = run.scan()
            summary[run.name] = counts
        except Exception as exc:  # one broken run must not stop the others being rescanned
            log.exception("periodic scan of %s failed", run.name)
            summary[run.name] = {"error": str(exc)}
    return summary


JOB_FUNCTIONS: dict[str, Callable[[int], dict]] = {Job.SCAN: scan_job}
