"""Queue plumbing: the Redis client, enqueuing a ``Job`` row, starting one, and withdrawing it.

Each RQ job is enqueued with ``job_id = "job-<pk>"`` so that either side can always find the
other, and every row is enqueued as the same entry point (``RUN_JOB``), which looks up the body
for the row's kind and mode when it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from dashboard import artifacts
from dashboard.models import Checkpoint, Export, Job, Run
from dashboard.queue_connection import redis_connection

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from redis import Redis
    from rq import Queue

log = logging.getLogger(__name__)

# What every row is enqueued as. A dotted path, as RQ stores it: the entry point lives with the
# registry of bodies, which itself starts jobs (auto-prune after a scan) through this module.
RUN_JOB = "dashboard.jobs.registry.run_job"

# Explicit per kind: RQ's default of 180 s is far too short for a big freeze or a long training.
# ``settings.JOB_TIMEOUTS`` (kind -> seconds) overrides single kinds, e.g. for a deployment with
# very long trainings, or a test that wants a timeout within seconds.
TIMEOUTS = {
    Job.SCAN: 30 * 60,
    Job.SAVE: 12 * 60 * 60,
    Job.RESTORE: 60 * 60,
    Job.FREEZE: 2 * 60 * 60,
    Job.PRUNE: 60 * 60,
    Job.COMPARE: 2 * 60 * 60,
}

# Kinds whose bodies check ``should_stop`` between steps (and stop without leaving a half-written
# file); the others have their work horse stopped through RQ as soon as they are canceled.
COOPERATIVE_KINDS = {Job.SAVE, Job.COMPARE}

# A ``queued`` row without an RQ id younger than this may still be being enqueued by ``start``.
ENQUEUE_GRACE_SECONDS = 10
# A canceled job whose body has not stopped by itself after this long gets its work horse stopped.
CANCEL_GRACE_SECONDS = 20

WAITING_FOR_QUEUE = "Waiting for the job queue: it will start when the queue is reachable again."


class QueueUnavailable(Exception):
    """Redis could not be reached; the ``Job`` row exists and is enqueued once Redis is back."""

    user_message = (
        "The job queue is unavailable right now. The job is recorded and will start "
        "when the queue is reachable again."
    )

    def __init__(self, job: Job):
        super().__init__("The job queue is unavailable")
        self.job = job


def rq_job_id(job_pk: int) -> str:
    return f"job-{job_pk}"


def job_pk_from_rq_id(rq_id: str) -> int | None:
    prefix, _, pk = rq_id.partition("-")
    return int(pk) if prefix == "job" and pk.isdigit() else None


def timeout_for(kind: str) -> int:
    overrides = getattr(settings, "JOB_TIMEOUTS", None) or {}
    return int(overrides.get(kind, TIMEOUTS[kind]))


def get_queue(connection: Redis | None = None) -> Queue:
    import django_rq

    # Enqueue at once, not at the end of a surrounding transaction (django-rq's default): callers
    # commit the Job row first, and a Redis outage must surface here, where it can be reported.
    return django_rq.get_queue(
        settings.JOB_QUEUE, commit_mode="auto", connection=connection or redis_connection()
    )


def enqueue(job: Job, *, queue: Queue | None = None) -> None:
    """Hand an existing ``Job`` row to RQ. Raises ``RedisError`` when Redis is down.

    Safe to repeat: the RQ id is derived from the row, and a row is claimed, so run, only once.
    """
    (queue or get_queue()).enqueue(
        RUN_JOB,
        job.pk,
        job_id=rq_job_id(job.pk),
        job_timeout=timeout_for(job.kind),
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"{job.kind} #{job.pk}",
    )
    Job.objects.filter(pk=job.pk).update(rq_job_id=rq_job_id(job.pk), message="")
    job.rq_job_id, job.message = rq_job_id(job.pk), ""


def enqueue_or_report(job: Job) -> None:
    """Enqueue a committed row; when Redis is down, say so on the row and raise ``QueueUnavailable``."""
    try:
        enqueue(job)
    except RedisError as exc:
        log.warning("queue unavailable for job %s: %s", job.pk, exc)
        job.message = WAITING_FOR_QUEUE
        job.save(update_fields=["message"])
        raise QueueUnavailable(job) from exc


def start(
    kind: str,
    *,
    run: Run | None = None,
    checkpoint: Checkpoint | None = None,
    params: dict | None = None,
    user: AbstractBaseUser | AnonymousUser | None = None,
    retry_of: Job | None = None,
) -> Job:
    """Create a ``Job`` row and enqueue it.

    When Redis is down the row stays ``queued`` with a message saying so, and
    ``QueueUnavailable`` is raised so the page can tell the user plainly; the reconciler
    enqueues it once Redis is back. A freeze is refused with ``Checkpoint.FreezeRunning`` (naming
    the job) while another freeze writing the same file is queued or running.
    """
    with transaction.atomic():
        if kind == Job.FREEZE and checkpoint is not None:
            artifacts.check_no_freeze_running(checkpoint, (params or {}).get("outputs") or [],
                                              kind=(params or {}).get("kind", Export.FROZEN_PB))
        job = Job.objects.create(
            kind=kind,
            run=run,
            checkpoint=checkpoint,
            params=params or {},
            retry_of=retry_of,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
    enqueue_or_report(job)
    return job


def withdraw(job: Job) -> None:
    """Take a canceled job out of the queue, or stop its work horse if it is running.

    Best effort: with Redis down nothing happens here, and the claim and the reconciler still
    keep a canceled row from running or stop it later.
    """
    if not job.rq_job_id:
        return
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob
    from rq.job import JobStatus

    try:
        connection = redis_connection()
        rq_job = RQJob.fetch(job.rq_job_id, connection=connection)
        status = rq_job.get_status()
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            rq_job.cancel()
        elif status == JobStatus.STARTED and job.kind not in COOPERATIVE_KINDS:
            # Bodies that never look at should_stop() are stopped at once; the others get the
            # chance to stop between two steps, without a half-written file (see reconcile_jobs).
            send_stop_job_command(connection, job.rq_job_id)
    except (NoSuchJobError, InvalidJobOperation):
        pass
    except RedisError as exc:
        log.warning("could not withdraw job %s from the queue: %s", job.pk, exc)
