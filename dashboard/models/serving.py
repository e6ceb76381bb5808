"""A TF Serving model a run publishes to: a base path (under SERVING_ROOT) and a model name."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

MODEL_NAME = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                            "Letters, digits, '.', '-' and '_', starting with a letter or digit.")


class ServingTarget(models.Model):
    run = models.ForeignKey("dashboard.Run", related_name="serving_targets", on_delete=models.CASCADE)
    model_name = models.CharField(max_length=100, validators=[MODEL_NAME])
    base_path = models.CharField(max_length=1024, help_text="TF Serving's model base path (models.config lives here).")
    keep_newest = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["model_name"]
        constraints = [models.UniqueConstraint(fields=["base_path", "model_name"], name="unique_serving_model")]

    def __str__(self) -> str:
        return f"{self.model_name} in {self.base_path}"

    def get_absolute_url(self) -> str:
        return reverse("serving-target", args=[self.pk])

    @property
    def model_path(self) -> Path:
        return Path(self.base_path) / self.model_name
