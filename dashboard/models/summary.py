"""What the runs list and a run's page show about its checkpoints, kept per run."""

from __future__ import annotations

from django.db import models


class RunSummary(models.Model):
    """Counts and extremes of one run's checkpoint rows, written in the transactions that change
    those rows (``dashboard.summaries.refresh``), so that no page aggregates a run's rows per view.

    ``dashboard.summaries.rebuild`` (``manage.py rebuild_summaries``) recomputes it from the rows.
    """

    run = models.OneToOneField("dashboard.Run", primary_key=True, related_name="summary", on_delete=models.CASCADE)
    checkpoint_count = models.BigIntegerField(default=0)  # every row, files gone or not (the history)
    on_disk_count = models.BigIntegerField(default=0)
    on_disk_bytes = models.BigIntegerField(default=0)
    latest_step = models.BigIntegerField(null=True, blank=True)  # the highest step on disk
    # The newest recorded_at on disk: part of the run page's change stamp.
    last_recorded = models.DateTimeField(null=True, blank=True)
    last_activity = models.DateTimeField(null=True, blank=True)  # the newest saved_at of any row
    status_counts = models.JSONField(default=dict, blank=True)
    stepless_count = models.BigIntegerField(default=0)  # rows without a step: the history lists them last

    def __str__(self) -> str:
        return f"{self.run_id}: {self.checkpoint_count} checkpoints"

    @property
    def count(self) -> int:
        """Checkpoints on disk (what the run page's summary calls its checkpoints)."""
        return self.on_disk_count

    @property
    def total_bytes(self) -> int:
        return self.on_disk_bytes
