"""A stored variable-by-variable comparison of two checkpoints."""

from __future__ import annotations

from django.db import models
from django.urls import reverse
from django.utils import timezone

from .checkpoint import Checkpoint
from .job import Job


class Comparison(models.Model):
    """A stored variable-by-variable comparison of two checkpoints (computed once by a job)."""

    a = models.ForeignKey("dashboard.Checkpoint", related_name="comparisons_as_a", on_delete=models.CASCADE)
    b = models.ForeignKey("dashboard.Checkpoint", related_name="comparisons_as_b", on_delete=models.CASCADE)
    job = models.ForeignKey(
        "dashboard.Job", null=True, blank=True, related_name="comparisons", on_delete=models.SET_NULL
    )
    # The fingerprints compared: a rewritten checkpoint makes a stored comparison stale.
    fingerprint_a = models.CharField(max_length=64, blank=True)
    fingerprint_b = models.CharField(max_length=64, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    variables = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["a", "b"], name="unique_comparison_pair")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.a} vs {self.b}"

    class CannotCompare(Exception):
        """The pair cannot be compared (files gone, unreadable, outside the roots); the message says why."""

    # Besides values that moved, these notes count as "changed" for the changed-only filter.
    STRUCTURAL_NOTES = ("only in A", "only in B", "shape changed", "dtype changed")
    # Step over step only: why a heatmap cell has no value although the engine gave no note.
    NOTE_NOT_FINITE, NOTE_ABSENT = "NaN or Inf", "absent"
    SORT_KEYS = ("name", "relative_change", "l2_a", "l2_b", "l2_diff", "max_abs_diff", "cosine")
    DEFAULT_SORT = "-relative_change"

    def get_absolute_url(self) -> str:
        return f"{reverse('compare')}?a={self.a_id}&b={self.b_id}"

    @property
    def is_fresh(self) -> bool:
        """Both checkpoints still carry the fingerprints that were compared (nothing rewritten since)."""
        return self.fingerprint_a == self.a.fingerprint and self.fingerprint_b == self.b.fingerprint

    @classmethod
    def for_pair(cls, a: Checkpoint, b: Checkpoint) -> Comparison | None:
        """The stored comparison of A with B if it is still fresh, else None (compute it again)."""
        found = cls.objects.filter(a=a, b=b).select_related("job").first()
        if found is None:
            return None
        found.a, found.b = a, b  # the caller's rows carry the current fingerprints
        return found if found.is_fresh else None

    @classmethod
    def jobs_for_pair(cls, a: Checkpoint, b: Checkpoint) -> models.QuerySet[Job]:
        """Compare jobs asked for exactly this pair, newest first."""
        return Job.objects.filter(kind=Job.COMPARE, params__a=a.pk, params__b=b.pk).order_by("-created_at")

    def as_json(self) -> dict:
        """What ``manage.py compare --json`` prints."""
        return {
            "a": self.a.reference(),
            "b": self.b.reference(),
            "variables": self.variables,
            "metrics": self.metrics,
            "summary": self.summary,
            "computed_at": self.created_at.isoformat(),
        }

    def rows(self, *, changed_only: bool = False, contains: str = "", sort: str = DEFAULT_SORT) -> list[dict]:
        """Variables filtered and sorted for the table; rows without the sort value go last.

        Sorting by relative change puts changed variables whose change has no finite ratio (A all
        zeros, NaN/Inf appeared) first when descending: "did anything blow up" is the question.
        """
        key = sort.lstrip("-")
        descending = sort.startswith("-")
        if key not in self.SORT_KEYS:
            key, descending = self.DEFAULT_SORT.lstrip("-"), True
        needle = contains.strip().lower()
        rows = [
            r for r in sorted(self.variables, key=lambda r: r["name"])
            if (not changed_only or r.get("changed") or r.get("note") in self.STRUCTURAL_NOTES)
            and needle in r["name"].lower()
        ]

        def value(row: dict):
            v = row.get(key)
            if v is None and key == "relative_change" and row.get("changed"):
                return float("inf")
            return v

        with_value = [r for r in rows if value(r) is not None]
        with_value.sort(key=value, reverse=descending)
        return with_value + [r for r in rows if value(r) is None]
