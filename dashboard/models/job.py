"""A unit of background work (scan, save, restore, freeze, prune, compare) and its outcome."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


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
        indexes = [
            models.Index(fields=["status", "created_at"]), models.Index(fields=["kind", "status"]),
            # The jobs list, newest first, by keyset (views/paging.py): all jobs, or one run's.
            models.Index(fields=["created_at", "id"], name="job_created_id"),
            models.Index(fields=["run", "created_at", "id"], name="job_run_created_id"),
        ]

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


def temp_owner_ended(owner: str) -> bool | None:
    """Whether the writer named in a temporary file (``job<pk>``) has ended; None for other names."""
    if not owner.startswith("job") or not owner[3:].isdigit():
        return None
    status = Job.objects.filter(pk=int(owner[3:])).values_list("status", flat=True).first()
    return status is None or status in Job.ENDED
