"""A unit of background work (scan, save, restore, freeze, prune, compare) and its outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser


class Job(models.Model):
    SCAN, SAVE, RESTORE, FREEZE, PRUNE, COMPARE = "scan", "save", "restore", "freeze", "prune", "compare"
    KIND_CHOICES = [(k, k) for k in (SCAN, SAVE, RESTORE, FREEZE, PRUNE, COMPARE)]
    QUEUED, RUNNING, FINISHED, FAILED, CANCELED = "queued", "running", "finished", "failed", "canceled"
    STATUS_CHOICES = [(s, s) for s in (QUEUED, RUNNING, FINISHED, FAILED, CANCELED)]
    ENDED = (FINISHED, FAILED, CANCELED)

    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=QUEUED)
    run = models.ForeignKey("dashboard.Run", null=True, blank=True, related_name="jobs", on_delete=models.SET_NULL)
    checkpoint = models.ForeignKey(
        "dashboard.Checkpoint", null=True, blank=True, related_name="jobs", on_delete=models.SET_NULL
    )
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    log = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True, db_index=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, related_name="retries", on_delete=models.SET_NULL)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"]), models.Index(fields=["kind", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("job", args=[self.pk])

    @property
    def is_ended(self) -> bool:
        return self.status in self.ENDED

    @property
    def can_cancel(self) -> bool:
        return self.status in (self.QUEUED, self.RUNNING)

    @property
    def can_retry(self) -> bool:
        return self.status in (self.FAILED, self.CANCELED)

    class AlreadyRetried(ValueError):
        """This job has a retry already; only the newest attempt of a chain may be retried."""

        def __init__(self, job: Job, newest: Job):
            super().__init__(
                f"Job #{job.pk} was already retried as job #{newest.pk} ({newest.status}). "
                + (
                    f"Retry job #{newest.pk} instead."
                    if newest.can_retry
                    else "A job is retried at most once; retry the newest attempt if it fails."
                )
            )
            self.job, self.newest = job, newest

    def cancel(self, user: AbstractBaseUser | AnonymousUser | None) -> bool:
        """Cancel a queued or running job for ``user``; False when it had already ended.

        Raises ``PermissionDenied`` unless the user may start a job of this kind (a canceled prune
        stops mid-delete). The row is the truth: a queued job will not start, a running save stops
        between two steps (``JobContext.should_stop``), and the reconciler stops a body that does not.
        """
        from dashboard import access, jobs

        access.require_job_permission(user, self.kind)
        canceled = Job.objects.filter(pk=self.pk, status__in=[self.QUEUED, self.RUNNING]).update(
            status=self.CANCELED, ended_at=timezone.now(), message="Canceled on request"
        )
        self.refresh_from_db()
        if canceled:
            jobs.withdraw(self)
        return bool(canceled)

    def retry(self, user: AbstractBaseUser | AnonymousUser | None) -> Job:
        """Start a new job with the same parameters for ``user``, linked to this one (``retry_of``).

        Raises ``PermissionDenied`` unless the user may start a job of this kind, ``ValueError``
        unless this job failed or was canceled, ``Job.AlreadyRetried`` when it has a retry already
        (two retries of one save would both rewrite the same checkpoints), and
        ``dashboard.jobs.QueueUnavailable`` (the new row exists) when Redis is down.
        """
        from redis.exceptions import RedisError

        from dashboard import access, jobs

        access.require_job_permission(user, self.kind)
        # The row lock makes "has no retry yet" and the insert one step: of two concurrent retries
        # the second waits here and then sees the first one's row.
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=self.pk)
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
        try:
            jobs.enqueue(retry)
        except RedisError as exc:
            retry.message = "Waiting for the job queue: it will start when the queue is reachable again."
            retry.save(update_fields=["message"])
            raise jobs.QueueUnavailable(retry) from exc
        return retry


def temp_owner_ended(owner: str) -> bool | None:
    """Whether the writer named in a temporary file (``job<pk>``) has ended; None for other names."""
    if not owner.startswith("job") or not owner[3:].isdigit():
        return None
    status = Job.objects.filter(pk=int(owner[3:])).values_list("status", flat=True).first()
    return status is None or status in Job.ENDED
