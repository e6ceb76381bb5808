"""Webhook endpoints maintainers register, and every delivery of an event to one of them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class WebhookEndpoint(models.Model):
    """A receiver URL, the secret its deliveries are signed with, and the events it wants."""

    url = models.URLField(max_length=2000)
    # Kept in clear: signing needs it. Shown once, when set; pages show only its first characters.
    secret = models.CharField(max_length=200)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["url", "pk"]

    def __str__(self) -> str:
        return self.url

    def get_absolute_url(self) -> str:
        return reverse("webhook", args=[self.pk])

    @property
    def secret_hint(self) -> str:
        return f"{self.secret[:10]}…" if self.secret else ""


class WebhookDelivery(models.Model):
    """One event for one endpoint, with every attempt to deliver it.

    ``pending`` rows are due at ``next_attempt_at``; ``sending`` is held by the worker trying it
    now (since ``claimed_at``); ``delivered`` and ``failed`` (gave up, or the receiver refused it
    with a status that retrying cannot change) are final. A redelivery is a new row with the same
    event id and body, so that the receiver can tell it is the same event.
    """

    PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
    STATE_CHOICES = [(s, s) for s in (PENDING, SENDING, DELIVERED, FAILED)]

    endpoint = models.ForeignKey(WebhookEndpoint, related_name="deliveries", on_delete=models.CASCADE)
    event = models.CharField(max_length=40)
    event_id = models.CharField(max_length=40, db_index=True)
    payload = models.JSONField()
    # [{"at", "status", "duration_ms", "excerpt", "error", "address"}], oldest first.
    attempts = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=PENDING)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    redelivery_of = models.ForeignKey(
        "self", null=True, blank=True, related_name="redeliveries", on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["state", "created_at"]),  # trimming the log of old finished rows
            # An endpoint's delivery log, newest (highest id) first, whole or by state: the page's
            # and the API's keyset reads.
            models.Index(fields=["endpoint", "id"], name="delivery_endpoint_id"),
            models.Index(fields=["endpoint", "state", "id"], name="delivery_endpoint_state_id"),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.pk} to {self.endpoint_id} ({self.state})"

    @property
    def last_attempt(self) -> dict | None:
        return self.attempts[-1] if self.attempts else None
