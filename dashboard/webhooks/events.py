"""What happened, for receivers: the events, their JSON bodies, and recording them for delivery.

``emit(event, objects)`` is called where the thing happens (a scan records checkpoints, a freeze
records its export, a job fails, a prune finishes), inside that transaction: one delivery row per
object and subscribed endpoint is stored with it, and handed to the queue once it commits. A
rolled-back change sends nothing; a committed one is never lost (rows the queue did not get are
picked up by ``delivery.dispatch_due``).

Emitting must cost nothing measurable when nobody listens: a scan may record 10,000 checkpoints.
Which events any active endpoint wants is one small query, remembered for a few seconds per
process, and ``objects`` may be a lazy queryset that is only evaluated when someone does listen.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from dashboard.models import AuditEvent, Checkpoint, Export, Job, WebhookDelivery, WebhookEndpoint
from dashboard.representations import checkpoint_item, export_item, job_item, run_item

from . import delivery

CHECKPOINT_RECORDED = "checkpoint.recorded"
CHECKPOINT_CORRUPT = "checkpoint.corrupt"
EXPORT_VERIFIED = "export.verified"
EXPORT_FAILED = "export.failed"
JOB_FAILED = "job.failed"
RETENTION_PRUNED = "retention.pruned"

EVENTS = {
    CHECKPOINT_RECORDED: "A checkpoint was recorded: found by a scan, or written by a save job.",
    CHECKPOINT_CORRUPT: "A checkpoint turned out corrupt (a scan or a verify read damaged data).",
    EXPORT_VERIFIED: "A freeze wrote an export whose outputs match the checkpoint's.",
    EXPORT_FAILED: "A freeze wrote an export whose outputs differ from the checkpoint's, or an "
                   "export's file changed on disk.",
    JOB_FAILED: "A job failed (its error, or the reason its worker stopped, is in the body).",
    RETENTION_PRUNED: "A prune (manual or automatic) deleted checkpoints of a run.",
}

# An endpoint saved in another process is seen by this one within this many seconds.
SUBSCRIPTION_CACHE_SECONDS = 5.0
_subscriptions: tuple[float, frozenset[str]] | None = None

# Rows inserted per statement when an event is about many objects.
_BATCH = 500


def subscribed_events() -> frozenset[str]:
    """The events at least one active endpoint wants (remembered for a few seconds)."""
    global _subscriptions
    now = time.monotonic()
    if _subscriptions is not None and _subscriptions[0] > now:
        return _subscriptions[1]
    wanted: set[str] = set()
    for events in WebhookEndpoint.objects.filter(active=True).values_list("events", flat=True):
        wanted.update(events or ())
    _subscriptions = (now + SUBSCRIPTION_CACHE_SECONDS, frozenset(wanted))
    return _subscriptions[1]


def forget_subscriptions() -> None:
    """Read the subscriptions again on the next emit (this process just changed an endpoint)."""
    global _subscriptions
    _subscriptions = None


def emit(event: str, objects: Any) -> int:
    """Record ``event`` about each of ``objects`` for every active endpoint subscribed to it.

    ``objects``: one model instance, an iterable or (lazy) queryset of them, or a ready dict of
    the body's fields; checkpoints for ``checkpoint.*``, exports for ``export.*``, jobs for
    ``job.failed``, the prune's ``AuditEvent`` for ``retention.pruned``. Returns how many
    deliveries were recorded; they are enqueued when the surrounding transaction commits.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if event not in subscribed_events():
        return 0
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True).only("id", "events") if event in e.events]
    if not endpoints:
        return 0
    created_at = timezone.now()
    rows = []
    for obj in _objects(event, objects):
        body = {"id": f"evt_{uuid.uuid4().hex}", "event": event, "created_at": created_at.isoformat(),
                **_fields(event, obj)}
        rows.extend(
            WebhookDelivery(endpoint_id=e.pk, event=event, event_id=body["id"], payload=body,
                            created_at=created_at, next_attempt_at=created_at)
            for e in endpoints
        )
    if not rows:
        return 0
    WebhookDelivery.objects.bulk_create(rows, batch_size=_BATCH)
    ids = [row.pk for row in rows if row.pk is not None]
    # robust: a queue outage must not fail the commit of what happened; dispatch_due sends these later.
    transaction.on_commit(partial(delivery.enqueue_deliveries, ids), robust=True)
    return len(rows)


def _objects(event: str, objects: Any) -> Iterable[Any]:
    if isinstance(objects, dict | models.Model):
        return [objects]
    if isinstance(objects, models.QuerySet):
        related = {Checkpoint: ("run",), Export: ("checkpoint__run",), Job: ("run",), AuditEvent: ("run",)}
        objects = objects.select_related(*related.get(objects.model, ()))
        if objects.model is Checkpoint:  # the body needs none of the bulky per-checkpoint details
            objects = objects.defer("variables", "files", "verification", "problems")
        return objects
    return objects


def _fields(event: str, obj: Any) -> dict[str, Any]:
    """The body's object, as the REST API shows it."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, Checkpoint):
        return {"checkpoint": {**checkpoint_item(obj), "run": obj.run.name}}
    if isinstance(obj, Export):
        return {"export": export_item(obj)}
    if isinstance(obj, Job):
        return {"job": job_item(obj)}
    if isinstance(obj, AuditEvent):
        return prune_fields(obj)
    raise TypeError(f"no webhook body for {type(obj).__name__} ({event})")


def prune_fields(event: AuditEvent) -> dict[str, Any]:
    """``retention.pruned``: the run, and what the prune recorded in its audit event."""
    details = event.details or {}
    plan = details.get("plan") or {}
    deleted = [d["prefix"] for d in plan.get("decisions", ()) if f"{d['prefix']}.index" in d.get("delete_files", ())]
    return {
        "run": run_item(event.run) if event.run_id else None,
        "prune": {
            "audit_event": event.pk,
            "job": details.get("job"),
            "auto": bool(details.get("auto")),
            "summary": event.summary,
            "bytes_freed": event.bytes_freed,
            "deleted": deleted,
            # Set when the files went to the run's trash (restorable; freed when it is emptied).
            "trash_batch": (details.get("trash") or {}).get("batch"),
            "fingerprint": details.get("fingerprint"),
        },
    }
