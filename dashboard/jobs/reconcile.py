"""Make ``Job`` rows agree with what RQ knows, every few seconds (from ``dashboard/cron.py``).

A row whose work horse or worker died turns ``failed`` with the reason, a row created while Redis
was down (or lost by a Redis restart) is enqueued, and a canceled row whose body does not stop by
itself has its work horse stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from typing import Any

from django.db import close_old_connections
from django.utils import timezone
from redis.exceptions import RedisError

from dashboard import webhooks
from dashboard.models import Job

from .queue import (
    CANCEL_GRACE_SECONDS,
    ENQUEUE_GRACE_SECONDS,
    enqueue,
    get_queue,
    job_pk_from_rq_id,
    redis_connection,
)

log = logging.getLogger(__name__)


def _dead_worker_reason(rq_job, connection) -> str | None:
    """Why the worker running ``rq_job`` cannot be alive, or None when it may be."""
    from rq.worker import Worker

    if not rq_job.worker_name:
        return None
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + rq_job.worker_name, connection=connection)
    if worker is None:
        return "Its worker stopped sending heartbeats and is gone (killed, or lost its connection)."
    # Same machine: a dead process is certain at once, no need to wait for heartbeats to expire.
    if worker.hostname == socket.gethostname() and worker.pid and not _worker_process_alive(worker.pid):
        return f"Its worker process ({worker.pid}) died."
    return None


def _worker_process_alive(pid: int) -> bool:
    """Whether the RQ worker process with this pid, on this machine, still runs (exists, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        # A killed process whose parent has not reaped it yet still answers kill(0): a zombie.
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _failure_reason(rq_job) -> str:
    result = rq_job.latest_result()
    text = (getattr(result, "exc_string", "") or "").strip()
    if "Work-horse terminated unexpectedly" in text:
        signal_part = text.split("(signal", 1)[1].split(")", 1)[0].strip() if "(signal" in text else ""
        how = f" by signal {signal_part}" if signal_part else ""
        return (
            f"The work horse running this job was killed{how} (kill -9, or out of memory) before it "
            "could record an outcome."
        )
    if "AbandonedJobError" in text:
        return "Its worker died without finishing it (RQ found the job abandoned)."
    if "JobTimeoutException" in text:
        return "Timed out: the job ran longer than its limit and was stopped."
    last = text.splitlines()[-1] if text else "no details"
    return f"RQ reports the job failed: {last}"


def _fail(job: Job, reason: str) -> bool:
    updated = Job.objects.filter(pk=job.pk, status__in=[Job.QUEUED, Job.RUNNING]).update(
        status=Job.FAILED, error=reason, ended_at=timezone.now(), message=""
    )
    if updated:
        log.warning("job %s marked failed: %s", job.pk, reason)
        webhooks.emit(webhooks.JOB_FAILED, Job.objects.filter(pk=job.pk))
    return bool(updated)


def reconcile_jobs(*, now: dt.datetime | None = None) -> dict:
    """Make ``Job`` rows agree with what RQ knows. Run every few seconds by cron.

    - ``queued`` rows that never reached Redis (created during an outage) or that Redis lost
      (restarted without persistence) are enqueued.
    - ``queued``/``running`` rows whose RQ job failed, was stopped or is abandoned (work horse or
      whole worker killed) become ``failed`` (``canceled`` for a stop) with the reason.
    - canceled rows whose body still runs after ``CANCEL_GRACE_SECONDS`` get their horse stopped.
    """
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    close_old_connections()
    now = now or timezone.now()
    summary: dict[str, Any] = {"enqueued": [], "failed": [], "canceled": [], "stopped": []}
    try:
        connection = redis_connection()
        connection.ping()
        queue = get_queue(connection)
        # Executions whose heartbeat expired (their worker died) go to RQ's failed registry.
        started = StartedJobRegistry(queue=queue)
        started.cleanup()
    except RedisError as exc:
        summary["queue"] = f"unavailable: {exc}"
        return summary

    open_rows = Job.objects.filter(status__in=[Job.QUEUED, Job.RUNNING]).only(
        "id", "kind", "status", "rq_job_id", "created_at", "started_at"
    )
    for job in open_rows:
        if not job.rq_job_id:
            if job.status == Job.QUEUED and job.created_at < now - dt.timedelta(seconds=ENQUEUE_GRACE_SECONDS):
                enqueue(job, queue=queue)
                summary["enqueued"].append(job.pk)
            continue
        try:
            rq_job = RQJob.fetch(job.rq_job_id, connection=connection)
        except NoSuchJobError:
            rq_job = None
        if rq_job is None:
            if job.status == Job.QUEUED:
                enqueue(job, queue=queue)  # Redis lost it (restarted without persistence)
                summary["enqueued"].append(job.pk)
            elif _fail(job, "The queue lost this job while it was running (Redis was restarted or flushed)."):
                summary["failed"].append(job.pk)
            continue
        status = rq_job.get_status(refresh=False)
        if status == JobStatus.FAILED:
            if _fail(job, _failure_reason(rq_job)):
                summary["failed"].append(job.pk)
        elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
            if Job.objects.filter(pk=job.pk, status__in=[Job.QUEUED, Job.RUNNING]).update(
                status=Job.CANCELED, ended_at=now, message=f"{status.value.capitalize()} in the queue"
            ):
                summary["canceled"].append(job.pk)
        elif status == JobStatus.FINISHED:
            # The body records its outcome before RQ does, so this row's write was lost, unless
            # this was a duplicate delivery that found the row already claimed.
            if (rq_job.return_value() or {}).get("skipped"):
                continue
            if _fail(job, "The queue says the job finished, but its outcome was never recorded."):
                summary["failed"].append(job.pk)
        elif status == JobStatus.STARTED:
            reason = _dead_worker_reason(rq_job, connection)
            if reason and _fail(job, reason):
                summary["failed"].append(job.pk)

    # Canceled rows whose body did not stop by itself (it does not check, or is stuck in one step).
    cutoff = now - dt.timedelta(seconds=CANCEL_GRACE_SECONDS)
    running_ids = {pk for pk in map(job_pk_from_rq_id, started.get_job_ids(cleanup=False)) if pk}
    lingering = Job.objects.filter(pk__in=running_ids, status=Job.CANCELED, ended_at__lt=cutoff)
    for job in lingering.only("id", "rq_job_id"):
        try:
            send_stop_job_command(connection, job.rq_job_id)
            summary["stopped"].append(job.pk)
        except (NoSuchJobError, InvalidJobOperation):
            pass
    return {k: v for k, v in summary.items() if v}
