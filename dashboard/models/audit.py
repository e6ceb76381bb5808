"""The audit trail: who did what to which run or checkpoint, and what it freed."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=50)
    run = models.ForeignKey(
        "dashboard.Run", null=True, blank=True, related_name="audit_events", on_delete=models.SET_NULL
    )
    checkpoint = models.ForeignKey("dashboard.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL)
    summary = models.CharField(max_length=500)
    bytes_freed = models.BigIntegerField(default=0)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action}: {self.summary}"

    @classmethod
    def record(cls, action: str, summary: str, *, actor=None, run=None, checkpoint=None,
               bytes_freed: int = 0, details: dict | None = None) -> AuditEvent:
        return cls.objects.create(
            action=action, summary=summary, actor=actor if getattr(actor, "is_authenticated", False) else None,
            run=run, checkpoint=checkpoint, bytes_freed=bytes_freed, details=details or {},
        )
