"""Scalar curves read from a run's TensorBoard event files, and where reading each file stopped."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from persistence import events


class EventFile(models.Model):
    """One ``events.out.tfevents.*`` file of a run and how far it has been read."""

    run = models.ForeignKey("dashboard.Run", related_name="event_files", on_delete=models.CASCADE)
    path = models.CharField(max_length=1024, help_text="Relative to the run directory.")
    offset = models.BigIntegerField(default=0, help_text="Bytes read so far; the next read starts here.")
    size = models.BigIntegerField(default=0, help_text="The file's size when it was last read.")
    # An object in a bucket: its ETag (GCS: generation) when it was last read. Objects are replaced,
    # never changed in place, so the same ETag means nothing to read, not even a pending tail.
    etag = models.CharField(max_length=200, blank=True, default="")
    plugins = models.JSONField(default=dict, blank=True)  # tag -> summary plugin, from TF2 metadata
    problems = models.JSONField(default=list, blank=True)
    stuck = models.BooleanField(default=False)
    points = models.BigIntegerField(default=0)
    read_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "path"], name="unique_event_file_per_run")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.path}@{self.offset}"

    def state(self) -> events.EventFileState:
        return events.EventFileState(self.offset, dict(self.plugins or {}), list(self.problems or []), self.stuck)


class MetricSeries(models.Model):
    """One tag's curve in one run: its extent and a chart-sized copy of it.

    The points themselves are in ``MetricChunk`` rows; the chart copy (at most
    ``event_metrics.CHART_POINTS`` points) is recomputed when points arrive, so that drawing a
    curve of a million points reads one small row.
    """

    run = models.ForeignKey("dashboard.Run", related_name="metric_series", on_delete=models.CASCADE)
    tag = models.CharField(max_length=255)
    count = models.BigIntegerField(default=0)  # points stored (a step logged twice counts twice)
    chunk_count = models.PositiveIntegerField(default=0)
    first_step = models.BigIntegerField(null=True, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    chart_steps = models.BinaryField(default=b"")  # int64 little-endian
    chart_values = models.BinaryField(default=b"")  # float64 little-endian
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "tag"], name="unique_metric_tag_per_run")]
        ordering = ["tag"]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.tag} ({self.count} points)"

    def chart_points(self) -> tuple[list[int], list[float | None]]:
        steps, values = events.unpack(bytes(self.chart_steps), bytes(self.chart_values))
        # JSON has no NaN or infinity: a diverged value is a gap in the line.
        return steps.tolist(), [v if v == v and abs(v) != float("inf") else None for v in values.tolist()]


class MetricChunk(models.Model):
    """Up to ``event_metrics.CHUNK_POINTS`` consecutive points of one series, packed.

    Points are kept in the order they were read (a restarted trainer's repeated steps included);
    ``persistence.events.merge`` makes a curve of them.
    """

    series = models.ForeignKey(MetricSeries, related_name="chunks", on_delete=models.CASCADE)
    seq = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    min_step = models.BigIntegerField()
    max_step = models.BigIntegerField()
    steps = models.BinaryField()  # int64 little-endian
    values = models.BinaryField()  # float64 little-endian

    class Meta:
        constraints = [models.UniqueConstraint(fields=["series", "seq"], name="unique_chunk_per_series")]
        indexes = [models.Index(fields=["series", "max_step"], name="metric_chunk_series_max_step")]

    def __str__(self) -> str:
        return f"{self.series_id}#{self.seq} ({self.count} points)"


class MetricValue(models.Model):
    """One numeric metric of one checkpoint, as a row: what sorting a run's history by a metric
    reads in index order (``Checkpoint.metrics`` is JSON, which no single index can order by
    every name). Written with the metrics (``dashboard.summaries.record_metric_values``)."""

    run = models.ForeignKey("dashboard.Run", related_name="+", on_delete=models.CASCADE, db_index=False)
    checkpoint = models.ForeignKey(
        "dashboard.Checkpoint", related_name="+", on_delete=models.CASCADE, db_index=False
    )
    name = models.CharField(max_length=255)
    value = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["checkpoint", "name"], name="unique_metric_per_checkpoint")]
        indexes = [models.Index(fields=["run", "name", "value", "checkpoint"], name="metric_value_sort")]

    def __str__(self) -> str:
        return f"{self.checkpoint_id}:{self.name}={self.value}"
