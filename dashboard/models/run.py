"""A tracked checkpoint directory and its retention policy."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from persistence import discovery

from ..roots import checkpoint_directory, on_object_storage


class Run(models.Model):
    """A tracked checkpoint directory."""

    FORMAT_CHOICES = [(discovery.TF1, "TF1 Saver"), (discovery.TF2, "TF2 object")]
    BEST_MODE_CHOICES = [("min", "lowest is best"), ("max", "highest is best")]

    name = models.SlugField(max_length=100, unique=True)
    directory = models.CharField(max_length=1024, unique=True)
    format = models.CharField(max_length=8, choices=FORMAT_CHOICES, blank=True)
    recipe = models.CharField(max_length=255, blank=True, help_text="Model recipe for save and TF2 freeze jobs.")
    trusted = models.BooleanField(
        default=False, help_text="Allow graphs with file-system or Python ops to be restored and frozen."
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    last_scanned_at = models.DateTimeField(null=True, blank=True)
    directory_stamp = models.CharField(
        max_length=100, blank=True, help_text="Directory change token at the last full scan (see discovery)."
    )
    latest_prefix = models.CharField(max_length=512, blank=True, help_text="Named by the default state file.")
    last_preserved_timestamp = models.FloatField(null=True, blank=True)
    state_files = models.JSONField(default=list, blank=True)
    scan_problems = models.JSONField(default=list, blank=True)

    # Retention policy. Empty means "this rule is off".
    max_to_keep = models.PositiveIntegerField(null=True, blank=True)
    keep_checkpoint_every_n_hours = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    keep_every_n_steps = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    keep_best_n = models.PositiveIntegerField(null=True, blank=True)
    best_metric = models.CharField(max_length=100, blank=True)
    best_mode = models.CharField(max_length=3, choices=BEST_MODE_CHOICES, default="min")
    min_age_seconds = models.PositiveIntegerField(default=600)
    protect_exported = models.BooleanField(default=True)
    auto_prune = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("operate_run", "Can start save, restore, freeze, scan and compare jobs"),
            ("maintain_run", "Can prune, pin, make latest and edit retention"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if self._state.adding:
            self.apply_default_retention()
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("run", args=[self.name])

    def clean(self) -> None:
        try:
            self.directory = str(checkpoint_directory(self.directory, objects=True))
        except ValueError as exc:
            raise ValidationError({"directory": str(exc)}) from None

    @property
    def in_bucket(self) -> bool:
        """Whether the run lives in object storage (an ``s3://`` or ``gs://`` URL), where only scanning works yet."""
        return on_object_storage(self.directory)

    def recipe_path(self) -> str:
        """The dotted path of this run's recipe: its own, else the first registered one."""
        return self.recipe or (settings.CHECKPOINT_RECIPES[0] if settings.CHECKPOINT_RECIPES else "")

    RETENTION_FIELDS = (
        "max_to_keep", "keep_checkpoint_every_n_hours", "keep_every_n_steps", "keep_best_n", "best_metric",
        "best_mode", "min_age_seconds", "protect_exported", "auto_prune",
    )

    class PruneRefused(Exception):  # noqa: N818 - reads as what happened
        """A prune that must not run (another one holds the run, or the run changed); says why."""

    def apply_default_retention(self) -> None:
        """Give a new run ``settings.DEFAULT_RETENTION`` for every policy field left at the model default."""
        for name, value in getattr(settings, "DEFAULT_RETENTION", {}).items():
            field = self._meta.get_field(name)
            if getattr(self, name) == field.get_default():
                setattr(self, name, value)
