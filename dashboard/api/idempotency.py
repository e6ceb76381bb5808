"""``Idempotency-Key`` for the requests that start jobs.

A pipeline that times out waiting for ``POST /checkpoints/7/freeze`` cannot know whether the
freeze started; sending the same key again within ``KEY_LIFETIME`` returns the first answer and
starts nothing. Keys are per client (token, else session user) and kept in the database, so every
web process sees them. Only answers that started something (2xx) are kept: an error started
nothing, so the same key may be sent again once its cause is fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja import Status

from dashboard.models import IdempotencyKey

from .auth import client_id
from .problems import ApiProblem

KEY_LIFETIME = dt.timedelta(hours=24)
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"
HEADER_DESCRIPTION = (
    "Any unique string (a UUID): the same key from the same client within 24 h returns the first "
    "response and starts nothing new."
)


def once(request: HttpRequest, key: str | None, start: Callable[[], tuple[int, dict]]) -> Status:
    """The response of ``start()`` (a ``(status, body)``) unless this client sent ``key`` before;
    then the first response to it."""
    if key is None:
        return Status(*start())
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ApiProblem(400, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters.", kind="invalid-idempotency-key",
                         field=HEADER)
    owner = client_id(request)
    digest = hashlib.sha256(b"\n".join([request.method.encode(), request.path.encode(), request.body])).hexdigest()
    now = timezone.now()
    # This client's expired keys go now: the table holds at most a day of each client's keys.
    IdempotencyKey.objects.filter(owner=owner, created_at__lt=now - KEY_LIFETIME).delete()
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(owner=owner, key=key, request_digest=digest, created_at=now)
    except IntegrityError:
        first = IdempotencyKey.objects.filter(owner=owner, key=key).first()
        if first is None:  # expired and deleted by a concurrent request just now
            return once(request, key, start)
        if first.request_digest != digest:
            raise ApiProblem(422, f"This {HEADER} was used for a different request (method, path or body) in the "
                                  "last 24 h: use a new key.", kind="idempotency-key-reused") from None
        if first.status is None:
            raise ApiProblem(409, f"The first request with this {HEADER} is still being processed; try again in "
                                  "a moment.", kind="idempotency-key-in-progress",
                             headers={"Retry-After": "1"}) from None
        return Status(first.status, first.response)
    try:
        status, body = start()
    except BaseException:
        record.delete()
        raise
    if 200 <= status < 300:
        IdempotencyKey.objects.filter(pk=record.pk).update(status=status, response=body)
    else:
        record.delete()
    return Status(status, body)

