"""What a user does to a job once it exists: cancel it, or retry it as a new job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from dashboard import access
from dashboard.models import Job

from .queue import enqueue_or_report, withdraw

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser


def cancel_job(job: Job, user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """Cancel a queued or running job for ``user``; False when it had already ended.

    Raises ``PermissionDenied`` unless the user may start a job of this kind (a canceled prune
    stops mid-delete). The row is the truth: a queued job will not start, a running save stops
    between two steps (``JobContext.should_stop``), and the reconciler stops a body that does not.
    ``job`` is refreshed from the database.
    """
    access.require_job_permission(user, job.kind)
    canceled = Job.objects.filter(pk=job.pk, status__in=[Job.QUEUED, Job.RUNNING]).update(
        status=Job.CANCELED, ended_at=timezone.now(), message="Canceled on request"
    )
    job.refresh_from_db()
    if canceled:
        withdraw(job)
    return bool(canceled)


def retry_job(job: Job, user: AbstractBaseUser | AnonymousUser | None) -> Job:
    """Start a new job with the same parameters for ``user``, linked to ``job`` (``retry_of``).

    Raises ``PermissionDenied`` unless the user may start a job of this kind, ``ValueError``
    unless the job failed or was canceled, ``Job.AlreadyRetried`` when it has a retry already
    (two retries of one save would both rewrite the same checkpoints), and ``QueueUnavailable``
    (the new row exists) when Redis is down.
    """
    access.require_job_permission(user, job.kind)
    # The row lock makes "has no retry yet" and the insert one step: of two concurrent retries
    # the second waits here and then sees the first one's row.
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if not locked.can_retry:
            raise ValueError(f"Only failed or canceled jobs can be retried; this one is {locked.status}.")
        newest = locked.retries.order_by("-pk").first()
        if newest is not None:
            while (later := newest.retries.order_by("-pk").first()) is not None:
                newest = later
            raise Job.AlreadyRetried(locked, newest)
        retry = Job.objects.create(
            kind=locked.kind,
            run_id=locked.run_id,
            checkpoint_id=locked.checkpoint_id,
            params=locked.params,
            retry_of=locked,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
    # Enqueued only once the row is committed: a worker must be able to claim it.
    enqueue_or_report(retry)
    return retry
