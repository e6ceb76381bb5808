"""Personal access tokens for the REST API, and the responses remembered for idempotency keys."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone


def hash_secret(secret: str) -> str:
    """What is stored of a token: its sha256. The secret is random (not a password), so one fast
    hash is enough to keep a leaked database from being a list of working tokens."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(models.Model):
    VIEWER, OPERATOR, MAINTAINER = "viewer", "operator", "maintainer"
    SCOPE_CHOICES = [(s, s) for s in (VIEWER, OPERATOR, MAINTAINER)]
    PREFIX = "ckd_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, related_name="api_tokens", on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=SCOPE_CHOICES)
    # The first characters of the secret, shown in lists so that a token can be recognised.
    lookup = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.lookup}…, {self.scope})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired


class IdempotencyKey(models.Model):
    """The first answer to a job-starting request sent with an ``Idempotency-Key`` header.

    ``owner`` is the token (``token:<id>``) or the session's user (``user:<id>``): one client's
    keys never collide with another's. ``response`` stays empty while the first request runs.
    """

    owner = models.CharField(max_length=40)
    key = models.CharField(max_length=255)
    request_digest = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="unique_idempotency_key_per_owner")]

    def __str__(self) -> str:
        return f"{self.owner} {self.key}"
