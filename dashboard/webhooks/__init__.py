"""Signed webhooks, delivered durably: what happened reaches the URLs maintainers registered.

- ``events``: the event names, ``emit(event, objects)`` (called where the thing happens, inside
  its transaction), and the bodies: ``{id, event, created_at, <object as the API shows it>}``.
- ``delivery``: signing (``X-Webhook-Signature: t=<unix>,v1=<hmac>``), one attempt per RQ job,
  retries with backoff, ``dispatch_due`` for the scheduler, ``redeliver``.
- ``endpoints``: create / update / regenerate the secret / delete, checked and audited.

The address guard (no loopback, private, link-local or metadata receivers) is
``persistence/netguard.py``.
"""

from .delivery import SIGNATURE_HEADER, body_bytes, deliver, dispatch_due, redeliver, signature
from .endpoints import (
    InvalidEndpoint,
    create_endpoint,
    delete_endpoint,
    generate_secret,
    regenerate_secret,
    send_test_event,
    update_endpoint,
)
from .events import (
    CHECKPOINT_CORRUPT,
    CHECKPOINT_RECORDED,
    EVENTS,
    EXPORT_FAILED,
    EXPORT_VERIFIED,
    JOB_FAILED,
    RETENTION_PRUNED,
    emit,
    forget_subscriptions,
    subscribed_events,
)

__all__ = [
    "CHECKPOINT_CORRUPT", "CHECKPOINT_RECORDED", "EVENTS", "EXPORT_FAILED", "EXPORT_VERIFIED", "JOB_FAILED",
    "RETENTION_PRUNED", "SIGNATURE_HEADER", "InvalidEndpoint", "body_bytes", "create_endpoint", "delete_endpoint",
    "deliver", "dispatch_due", "emit", "forget_subscriptions", "generate_secret", "redeliver", "regenerate_secret",
    "send_test_event", "signature", "subscribed_events", "update_endpoint",
]
