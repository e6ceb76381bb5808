"""The audit trail: who did what to which run or checkpoint, and what it freed."""

from __future__ import annotations

from django.conf import settings
from django.db import connection, models
from django.utils import timezone


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now)
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
        # The audit page's keyset reads, unfiltered and by each filter, each ending with the id;
        # the action index also gives the distinct actions (``actions``).
        indexes = [
            models.Index(fields=["at", "id"], name="audit_at_id"),
            models.Index(fields=["run", "at", "id"], name="audit_run_at_id"),
            models.Index(fields=["action", "at", "id"], name="audit_action_at_id"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action}: {self.summary}"

    @classmethod
    def record(cls, action: str, summary: str, *, actor=None, run=None, checkpoint=None,
               bytes_freed: int = 0, details: dict | None = None) -> AuditEvent:
        return cls.objects.create(
            action=action, summary=summary, actor=actor if getattr(actor, "is_authenticated", False) else None,
            run=run, checkpoint=checkpoint, bytes_freed=bytes_freed, details=details or {},
        )

    @classmethod
    def actions(cls) -> list[str]:
        """The distinct actions recorded, one index probe each.

        ``SELECT DISTINCT`` reads the whole log (neither database skips through an index for it);
        this walks the action index from one value to the next instead.
        """
        table, column = connection.ops.quote_name(cls._meta.db_table), connection.ops.quote_name("action")
        sql = (f"WITH RECURSIVE found(value) AS ("
               f" SELECT MIN({column}) FROM {table}"
               f" UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found.value)"
               f" FROM found WHERE found.value IS NOT NULL)"
               f" SELECT value FROM found WHERE value IS NOT NULL")
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [value for (value,) in cursor.fetchall()]
