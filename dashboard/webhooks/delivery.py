"""Sending deliveries: signing, one attempt at a time, retries with backoff, and redelivery.

A delivery's row is the truth; RQ only carries "try delivery N now". The first attempt is
enqueued when the event's transaction commits. After a network error, a 429 or a 5xx the row
waits as ``pending`` until ``next_attempt_at`` (``settings.WEBHOOK_RETRY_SCHEDULE``), and the
scheduler's ``dispatch_due`` (every ``WEBHOOK_DISPATCH_SECONDS``) hands due rows to the workers,
together with rows whose first enqueue Redis missed and rows whose worker died mid-attempt. So a
receiver that is down, a worker restart or a Redis outage delays a delivery; none loses it.

An attempt is claimed (``pending`` -> ``sending``) in one UPDATE, so a row enqueued twice is
sent once per due time. Receivers still get an event twice when their answer is lost (a timeout
after they processed it): the event id (``X-Webhook-Id``, ``id`` in the body) is for deduplicating.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from dashboard.models import WebhookDelivery
from dashboard.queue_connection import redis_connection
from persistence import netguard

log = logging.getLogger(__name__)

DELIVER = "dashboard.webhooks.delivery.deliver"
SIGNATURE_HEADER = "X-Webhook-Signature"
EXCERPT_CHARS = 500
# The Retry-After of a 429 or 503 is honoured up to this long: a receiver cannot park deliveries
# for days.
MAX_RETRY_AFTER_SECONDS = 3600
USER_AGENT = "checkpoint-dashboard-webhooks/1"


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, keys sorted, the same on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` under the endpoint's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def rq_id(delivery_pk: int, attempt: int) -> str:
    # One RQ job per (delivery, attempt): re-enqueuing an attempt already waiting is recognised.
    # RQ's job ids are global in Redis, and several dashboards (each with its own queue and its
    # own row ids) may share one Redis: the queue's name keeps their ids apart.
    return f"webhook-{settings.JOB_QUEUE}-{delivery_pk}-{attempt}"


def _timeout_for_job() -> int:
    # Connect plus a few reads of the answer, plus the database work around them.
    return int(settings.WEBHOOK_TIMEOUT_SECONDS * 4 + 30)


def _queue(connection=None):
    import django_rq

    return django_rq.get_queue(settings.JOB_QUEUE, commit_mode="auto", connection=connection or redis_connection())


def enqueue_deliveries(ids: list[int], *, attempts: dict[int, int] | None = None) -> int:
    """Hand deliveries to the workers; returns how many. With Redis down, log and leave them to
    ``dispatch_due`` (their rows are due already)."""
    if not ids:
        return 0
    from rq import Queue

    try:
        queue = _queue()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            queue.enqueue_many([
                Queue.prepare_data(DELIVER, (pk,), job_id=rq_id(pk, (attempts or {}).get(pk, 0)),
                                   timeout=_timeout_for_job(), result_ttl=600, failure_ttl=7 * 24 * 3600,
                                   description=f"webhook delivery #{pk}")
                for pk in chunk
            ])
    except RedisError as exc:
        log.warning("queue unavailable for %d webhook deliveries (sent later): %s", len(ids), exc)
        return 0
    return len(ids)


def deliver(delivery_pk: int) -> dict[str, Any]:
    """What RQ runs: claim a due delivery and make one attempt. A row that is not due is skipped."""
    close_old_connections()
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_pk, state=WebhookDelivery.PENDING, next_attempt_at__lte=now
    ).update(state=WebhookDelivery.SENDING, claimed_at=now)
    if not claimed:
        return {"skipped": True}
    row = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_pk)
    return attempt(row)


def attempt(row: WebhookDelivery) -> dict[str, Any]:
    """Send a claimed (``sending``) delivery once and record the attempt and what comes next."""
    endpoint = row.endpoint
    started = timezone.now()
    record: dict[str, Any] = {"at": started.isoformat(), "status": None, "duration_ms": None, "excerpt": "",
                              "error": "", "address": ""}
    retry, retry_after = False, None
    if not endpoint.active:
        record["error"] = "The endpoint is disabled; nothing was sent."
    else:
        try:
            target = netguard.check_url(endpoint.url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE)
        except netguard.Unresolvable as exc:
            record["error"], retry = f"Not sent: {exc}", True  # DNS may answer again
        except netguard.RefusedURL as exc:
            record["error"] = f"Not sent: {exc}"
        else:
            retry, retry_after = _send(row, target, record)
    record["excerpt"] = record["excerpt"][:EXCERPT_CHARS]
    attempts = [*row.attempts, record]
    status = record["status"]
    values: dict[str, Any] = {"attempts": attempts, "claimed_at": None}
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    if status is not None and 200 <= status < 300:
        values.update(state=WebhookDelivery.DELIVERED, delivered_at=timezone.now(), next_attempt_at=None)
    elif retry and len(attempts) <= len(schedule):
        delay = schedule[len(attempts) - 1]
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        values.update(state=WebhookDelivery.PENDING, next_attempt_at=timezone.now() + dt.timedelta(seconds=delay))
    else:
        values.update(state=WebhookDelivery.FAILED, next_attempt_at=None)
    WebhookDelivery.objects.filter(pk=row.pk, state=WebhookDelivery.SENDING).update(**values)
    return {"delivery": row.pk, "state": values["state"], "status": status, "error": record["error"]}


def _send(row: WebhookDelivery, target: netguard.Target, record: dict[str, Any]) -> tuple[bool, float | None]:
    """POST the body; fill ``record``; return (retry?, Retry-After seconds)."""
    body = body_bytes(row.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Event": row.event,
        "X-Webhook-Id": row.event_id,
        "X-Webhook-Delivery": str(row.pk),
        "X-Webhook-Attempt": str(len(row.attempts) + 1),
        SIGNATURE_HEADER: signature(row.endpoint.secret, int(time.time()), body),
    }
    started = time.monotonic()
    try:
        answer = netguard.post(target, body, headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    except (OSError, http.client.HTTPException) as exc:
        record["duration_ms"] = int((time.monotonic() - started) * 1000)
        record["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return True, None
    record.update(status=answer.status, duration_ms=answer.duration_ms, excerpt=answer.excerpt,
                  address=answer.address)
    if 300 <= answer.status < 400:
        record["error"] = "The receiver answered with a redirect; redirects are not followed."
    elif answer.status == 429 or answer.status >= 500:
        return True, answer.retry_after if answer.status in (429, 503) else None
    elif answer.status >= 400:
        record["error"] = f"The receiver refused it ({answer.status}); not retried."
    return False, None


def redeliver(row: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery's event again, as a new delivery with the same event id and body.

    Raises ``ValueError`` when the endpoint is disabled.
    """
    if not row.endpoint.active:
        raise ValueError("The endpoint is disabled: enable it to redeliver.")
    now = timezone.now()
    with transaction.atomic():
        again = WebhookDelivery.objects.create(
            endpoint=row.endpoint, event=row.event, event_id=row.event_id, payload=row.payload,
            created_at=now, next_attempt_at=now, redelivery_of=row,
        )
        transaction.on_commit(lambda: enqueue_deliveries([again.pk]), robust=True)
    return again


def dispatch_due(*, now: dt.datetime | None = None, limit: int = 5000) -> dict[str, Any]:
    """Hand every due delivery to the workers (run by the scheduler every few seconds).

    Due: ``pending`` rows whose time has come that are not waiting in the queue already, and
    ``sending`` rows whose worker stopped mid-attempt (recorded as an attempt without an answer,
    then retried like a network error).
    """
    from rq.job import Job as RQJob
    from rq.job import JobStatus

    close_old_connections()
    now = now or timezone.now()
    _forget_old(now)
    abandoned = _recover_abandoned(now)
    due = list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("id", "attempts")[:limit]
    )
    if not due:
        return {"abandoned": abandoned} if abandoned else {}
    attempts = {pk: len(tries or ()) for pk, tries in due}
    try:
        connection = redis_connection()
        waiting = RQJob.fetch_many([rq_id(pk, n) for pk, n in attempts.items()], connection=connection)
    except RedisError as exc:
        return {"queue": f"unavailable: {exc}", "due": len(due)}
    live = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
    ids = [pk for pk, job in zip(attempts, waiting, strict=True)
           if job is None or job.get_status(refresh=False) not in live]
    sent = enqueue_deliveries(ids, attempts=attempts)
    return {"enqueued": sent, "due": len(due), **({"abandoned": abandoned} if abandoned else {})}


def _forget_old(now: dt.datetime, batch: int = 5000) -> int:
    # A bounded slice per tick: a log that grew large is trimmed over a few ticks, never in one
    # long DELETE. Pending rows are never forgotten, however old.
    cutoff = now - dt.timedelta(days=settings.WEBHOOK_LOG_DAYS)
    old = list(WebhookDelivery.objects.filter(
        state__in=[WebhookDelivery.DELIVERED, WebhookDelivery.FAILED], created_at__lt=cutoff,
    ).values_list("id", flat=True)[:batch])
    if old:
        WebhookDelivery.objects.filter(pk__in=old).delete()  # redeliveries of them keep their own rows
    return len(old)


def _recover_abandoned(now: dt.datetime) -> int:
    # An attempt takes at most the job timeout; a row still ``sending`` well after that has lost
    # its worker (killed, or the machine went away). Whether the receiver got it is unknown.
    cutoff = now - dt.timedelta(seconds=_timeout_for_job() + 60)
    stale = list(WebhookDelivery.objects.filter(state=WebhookDelivery.SENDING, claimed_at__lt=cutoff)
                 .only("id", "attempts", "claimed_at"))
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    for row in stale:
        attempts = [*row.attempts, {
            "at": row.claimed_at.isoformat(), "status": None, "duration_ms": None, "excerpt": "", "address": "",
            "error": "The worker making this attempt stopped before recording an answer.",
        }]
        state = WebhookDelivery.PENDING if len(attempts) <= len(schedule) else WebhookDelivery.FAILED
        WebhookDelivery.objects.filter(pk=row.pk, state=WebhookDelivery.SENDING).update(
            attempts=attempts, state=state, claimed_at=None, next_attempt_at=now if state == WebhookDelivery.PENDING else None,
        )
    return len(stale)
