"""A named, movable pointer of a run to one checkpoint (``prod``, ``canary``, ``best``)."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

ALIAS_NAME = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,62}$",
                            "Lower-case letters, digits, '-' and '_', starting with a letter or digit (at most 63).")


class Alias(models.Model):
    run = models.ForeignKey("dashboard.Run", related_name="aliases", on_delete=models.CASCADE)
    name = models.CharField(max_length=63, validators=[ALIAS_NAME])
    # PROTECT: an aliased checkpoint's row cannot go while the alias points at it (its files are
    # kept by every deleting action too: the retention plan, the prune, a save's rotation).
    checkpoint = models.ForeignKey("dashboard.Checkpoint", related_name="aliases", on_delete=models.PROTECT)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="unique_alias_per_run")]

    def __str__(self) -> str:
        return f"{self.run.name}@{self.name}"
