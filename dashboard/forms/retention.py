"""A run's retention policy, and pinning."""

from __future__ import annotations

from django import forms

from .. import retention
from ..models import Run

# --- retention ---------------------------------------------------------------------------------

_DB_INT_MAX = 2**31 - 1  # PositiveIntegerField on PostgreSQL: larger would be a database error


def unrecorded_metric_warning(metric: str, keep_best_n: int, recorded: list[str]) -> str:
    """What to tell a user whose best-N rule ranks by a metric no checkpoint of the run has."""
    known = f" Metrics it records: {', '.join(recorded)}." if recorded else " It records no metrics."
    return f"No checkpoint of this run has metric “{metric}”; the best-{keep_best_n} rule keeps nothing.{known}"


class RetentionPolicyForm(forms.Form):
    """A run's retention policy. Empty turns a rule off; a checkpoint goes only if no rule keeps it."""

    max_to_keep = forms.IntegerField(
        required=False, min_value=0, max_value=_DB_INT_MAX, label="Keep the newest",
        help_text="Checkpoints by step (TensorFlow's max_to_keep). Empty or 0 keeps every checkpoint.",
    )
    keep_checkpoint_every_n_hours = forms.FloatField(
        required=False, min_value=0, label="Also keep one every … hours",
        help_text="Among the older ones, as TensorFlow's CheckpointManager does (fractions like 0.5 work). "
                  "Only applies with “Keep the newest” set.",
    )
    keep_every_n_steps = forms.IntegerField(
        required=False, min_value=1, max_value=_DB_INT_MAX, label="Keep every … steps",
        help_text="Keeps checkpoints whose step is a multiple of this.",
    )
    keep_best_n = forms.IntegerField(
        required=False, min_value=0, max_value=_DB_INT_MAX, label="Keep the best",
        help_text="Checkpoints by the metric below.",
    )
    best_metric = forms.CharField(required=False, max_length=100, label="Metric", help_text="e.g. accuracy or loss.")
    best_mode = forms.ChoiceField(choices=Run.BEST_MODE_CHOICES, label="Best is")
    min_age_seconds = forms.IntegerField(
        min_value=0, max_value=_DB_INT_MAX, label="Never delete younger than (seconds)",
        help_text="A live trainer may still be writing a young checkpoint.",
    )
    protect_exported = forms.BooleanField(required=False, label="Keep checkpoints that have an export")
    auto_prune = forms.BooleanField(required=False, label="Prune automatically after every scan")

    def __init__(self, *args, metric_names: list[str] | None = None, has_metric=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_names = metric_names or []  # offered as suggestions (a <datalist>)
        self.fields["best_metric"].widget.attrs["list"] = "metric-names"
        self._has_metric = has_metric  # name -> whether any checkpoint of the run recorded it

    @classmethod
    def for_run(cls, run: Run, data=None, **kwargs) -> RetentionPolicyForm:
        def has_metric(name: str) -> bool:
            return name in kwargs.get("metric_names", ()) or run.checkpoints.filter(metrics__has_key=name).exists()

        return cls(data, initial=retention.retention_values(run), has_metric=has_metric, **kwargs)

    @property
    def warnings(self) -> list[str]:
        """Rules that are valid but cannot do what they say for this run (saved all the same)."""
        if self.is_bound:
            values = self.cleaned_data if self.is_valid() else {}
        else:
            values = self.initial
        keep_best_n, metric = values.get("keep_best_n"), (values.get("best_metric") or "").strip()
        if not keep_best_n or not metric or self._has_metric is None or self._has_metric(metric):
            return []
        return [unrecorded_metric_warning(metric, keep_best_n, self.metric_names)]

    def clean_best_metric(self) -> str:
        return self.cleaned_data.get("best_metric", "").strip()

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        from persistence.retention import RetentionPolicy

        if cleaned.get("keep_best_n") and not cleaned.get("best_metric"):
            self.add_error("best_metric", "Name the metric that ranks checkpoints (e.g. accuracy or loss).")
            return cleaned
        rules = {k: v for k, v in cleaned.items() if k != "auto_prune"}
        # The fields already check what the engine checks; this keeps the two from drifting apart.
        for message in RetentionPolicy(**{**rules, "best_metric": rules["best_metric"] or None}).validate():
            field = message.split(" ", 1)[0]
            self.add_error(field if field in self.fields else None, message)
        if cleaned.get("keep_checkpoint_every_n_hours") and not cleaned.get("max_to_keep"):
            self.add_error(
                "keep_checkpoint_every_n_hours",
                "Set “Keep the newest” too: like TensorFlow, this rule only picks among checkpoints beyond the newest N.",
            )
        return cleaned


class PinForm(forms.Form):
    """Pin (keep whatever the policy says) or unpin a checkpoint; a pin needs its reason."""

    action = forms.ChoiceField(choices=[("pin", "Pin"), ("unpin", "Unpin")])
    reason = forms.CharField(required=False, max_length=255)

    def clean(self):
        cleaned = super().clean()
        cleaned["reason"] = (cleaned.get("reason") or "").strip()
        if cleaned.get("action") == "pin" and not cleaned["reason"]:
            self.add_error("reason", "Say why this checkpoint is pinned (e.g. “shipped as v3”).")
        return cleaned


