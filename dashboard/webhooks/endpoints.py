"""Registering, changing and removing webhook endpoints (maintainers only; audited).

Plain arguments in, the row out, ``InvalidEndpoint`` (naming the field) for anything wrong, so
that the pages and any other caller share one implementation. A URL is checked against the
address guard here, when it is saved, and again by every delivery (DNS may change).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dashboard.models import AuditEvent, WebhookDelivery, WebhookEndpoint
from dashboard.representations import webhook_endpoint_item
from persistence import netguard

from .delivery import enqueue_deliveries
from .events import EVENTS, forget_subscriptions

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser

# Sent on demand, to whatever an endpoint subscribes to: lets a receiver check its signature code.
PING = "ping"
SECRET_PREFIX = "whsec_"
MIN_SECRET_LENGTH = 24


class InvalidEndpoint(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_url(url: str) -> str:
    """The URL stripped, or ``InvalidEndpoint("url", why)`` when deliveries may not go there."""
    url = (url or "").strip()
    try:
        netguard.check_url(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE)
    except netguard.RefusedURL as exc:
        raise InvalidEndpoint("url", str(exc)) from None
    return url


def check_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events or ()))
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown:
        raise InvalidEndpoint("events", f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}")
    if not chosen:
        raise InvalidEndpoint("events", "choose at least one event")
    return chosen


def check_secret(secret: str) -> str:
    secret = (secret or "").strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise InvalidEndpoint("secret", f"a secret needs at least {MIN_SECRET_LENGTH} characters; "
                                        "leave it empty to have one generated")
    return secret


def create_endpoint(*, url: str, events: Iterable[str], description: str = "", secret: str = "",
                    active: bool = True, user: User | None = None) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its secret (generated unless given), to show once."""
    url, chosen = check_url(url), check_events(events)
    secret = check_secret(secret) if secret else generate_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            url=url, events=chosen, description=description.strip()[:200], secret=secret, active=active,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        _audit("webhook_created", endpoint, user, f"Webhook endpoint {url} created for {', '.join(chosen)}")
    forget_subscriptions()
    return endpoint, secret


def update_endpoint(endpoint: WebhookEndpoint, *, url: str, events: Iterable[str], description: str = "",
                    active: bool = True, user: User | None = None) -> WebhookEndpoint:
    """Change where an endpoint is, what it receives and whether it is active (not its secret)."""
    url, chosen = check_url(url), check_events(events)
    with transaction.atomic():
        endpoint.url, endpoint.events, endpoint.active = url, chosen, active
        endpoint.description = description.strip()[:200]
        endpoint.save(update_fields=["url", "events", "description", "active"])
        state = "active" if active else "disabled"
        _audit("webhook_updated", endpoint, user, f"Webhook endpoint {url} changed ({state}; {', '.join(chosen)})")
    forget_subscriptions()
    return endpoint


def regenerate_secret(endpoint: WebhookEndpoint, *, user: User | None = None) -> str:
    """Give the endpoint a new secret and return it (to show once). Deliveries not yet sent are
    signed with the new one."""
    secret = generate_secret()
    with transaction.atomic():
        endpoint.secret = secret
        endpoint.save(update_fields=["secret"])
        _audit("webhook_secret", endpoint, user, f"Webhook endpoint {endpoint.url}: new signing secret")
    return secret


def delete_endpoint(endpoint: WebhookEndpoint, *, user: User | None = None) -> None:
    """Remove an endpoint and its delivery log; deliveries not yet sent are dropped."""
    with transaction.atomic():
        _audit("webhook_deleted", endpoint, user, f"Webhook endpoint {endpoint.url} deleted")
        endpoint.delete()
    forget_subscriptions()


def send_test_event(endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a signed ``ping`` (``{id, event, created_at, endpoint}``) to the endpoint, logged like
    any delivery. Raises ``InvalidEndpoint`` when the endpoint is disabled."""
    if not endpoint.active:
        raise InvalidEndpoint("active", "The endpoint is disabled: enable it to send a test event.")
    now = timezone.now()
    body = {"id": f"evt_{uuid.uuid4().hex}", "event": PING, "created_at": now.isoformat(),
            "endpoint": webhook_endpoint_item(endpoint)}
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(endpoint=endpoint, event=PING, event_id=body["id"], payload=body,
                                                  created_at=now, next_attempt_at=now)
        transaction.on_commit(lambda: enqueue_deliveries([delivery.pk]), robust=True)
    return delivery


def _audit(action: str, endpoint: WebhookEndpoint, user: User | None, summary: str) -> None:
    # Never the secret: the audit log is readable by every viewer.
    AuditEvent.record(action, summary[:500], actor=user,
                      details={"endpoint": endpoint.pk, "url": endpoint.url, "events": endpoint.events,
                               "active": endpoint.active})
