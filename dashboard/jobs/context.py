"""A job body's life on its ``Job`` row: claimed, reporting progress, then finished or failed.

Our ``Job`` row is the truth the pages show; RQ's own records expire. ``claim`` moves the row
from ``queued`` to ``running`` atomically, so a job enqueued twice runs once. ``execute`` runs the
body and records ``finished`` with its result or ``failed`` with the error and traceback. The
first verdict wins: a row that was canceled, or failed by the reconciler, while the body ran keeps
that status (the body's result is still stored).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from dashboard import webhooks
from dashboard.models import Job

from .queue import timeout_for

LOG_LINES_KEPT = 1000


class JobCanceled(Exception):  # noqa: N818 - reads as what happened, like TrainingCancelled
    """Raised by a job body that noticed ``should_stop()``; the row keeps its status."""


class JobContext:
    """What a running job body uses to report progress and to notice cancellation."""

    # Progress writes are throttled: a training loop may report thousands of times.
    MIN_INTERVAL = 0.5
    STOP_CHECK_INTERVAL = 1.0

    def __init__(self, job: Job):
        self.job = job
        self._last_write = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    def progress(self, percent: float, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.MIN_INTERVAL:
            return
        self._last_write = now
        pct = max(0, min(100, int(percent)))
        Job.objects.filter(pk=self.job.pk).update(progress=pct, message=message[:500])

    def log(self, line: str, **partial_result: Any) -> None:
        """Append a log line; keyword arguments also update the partial result, in the same write."""
        self.job.log.append(f"{timezone.now():%H:%M:%S} {line}")
        del self.job.log[:-LOG_LINES_KEPT]
        fields: dict[str, Any] = {"log": self.job.log}
        if partial_result:
            self.job.result = fields["result"] = {**(self.job.result or {}), **partial_result}
        Job.objects.filter(pk=self.job.pk).update(**fields)

    def partial_result(self, **values: Any) -> None:
        """Store part of the result while the job runs (what a retry needs if this one dies)."""
        self.job.result = {**(self.job.result or {}), **values}
        Job.objects.filter(pk=self.job.pk).update(result=self.job.result)

    def should_stop(self) -> bool:
        """True once the row is no longer ``running``: canceled, or failed by the reconciler."""
        if self._stop:
            return True
        now = time.monotonic()
        if now - self._last_stop_check < self.STOP_CHECK_INTERVAL:
            return False
        self._last_stop_check = now
        self._stop = not Job.objects.filter(pk=self.job.pk, status=Job.RUNNING).exists()
        return self._stop


# Every job kind is one of these: it reads its inputs from the row and returns the result to store.
JobBody = Callable[[Job, JobContext], dict[str, Any]]


def claim(job_pk: int) -> Job | None:
    """Mark a ``queued`` row ``running`` and return it; None when it is not queued any more."""
    claimed = Job.objects.filter(pk=job_pk, status=Job.QUEUED).update(
        status=Job.RUNNING, started_at=timezone.now(), error="", traceback="", message="Started"
    )
    return Job.objects.get(pk=job_pk) if claimed else None


def skipped(job_pk: int) -> dict:
    """What a delivery of a row that was canceled before it started, or already ran, returns."""
    status = Job.objects.filter(pk=job_pk).values_list("status", flat=True).first()
    return {"skipped": True, "status": status}


def execute(job: Job, body: JobBody) -> dict:
    """Run ``body`` on a claimed row and record the outcome.

    A failure is recorded and re-raised, so that RQ (or the command running the job inline)
    sees it as well.
    """
    ctx = JobContext(job)
    try:
        result = body(job, ctx) or {}
    except JobCanceled:
        result = dict(job.result or {})
    except Exception as exc:
        record_failure(job, exc)
        raise
    finished = Job.objects.filter(pk=job.pk, status=Job.RUNNING).update(
        status=Job.FINISHED, progress=100, result=result, ended_at=timezone.now()
    )
    if not finished:
        # Canceled (or failed by the reconciler) while finishing: keep that verdict, and what
        # the body did before it stopped.
        Job.objects.filter(pk=job.pk).update(result=result)
    return result


def record_failure(job: Job, exc: BaseException) -> None:
    """Mark a running row ``failed`` with the error and the traceback being handled."""
    failed = Job.objects.filter(pk=job.pk, status=Job.RUNNING).update(
        status=Job.FAILED,
        error=_error_text(job, exc)[:5000],
        traceback=traceback.format_exc(),
        ended_at=timezone.now(),
    )
    if failed:
        webhooks.emit(webhooks.JOB_FAILED, Job.objects.filter(pk=job.pk))


def _error_text(job: Job, exc: BaseException) -> str:
    from rq.timeouts import JobTimeoutException

    if isinstance(exc, JobTimeoutException):
        from rq import get_current_job

        # The limit the job was enqueued with, which the enqueuing process chose.
        current = get_current_job()
        limit = current.timeout if current is not None and current.timeout else timeout_for(job.kind)
        return (
            f"Timed out: the {job.kind} job ran longer than its limit of {_duration(limit)} "
            f"and was stopped. ({exc})"
        )
    return f"{type(exc).__name__}: {exc}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"
