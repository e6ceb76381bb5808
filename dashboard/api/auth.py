"""Who is asking: a Bearer token or the browser session, and how often they may ask.

A token request runs as the token's user limited to the token's scope (``access.limit_to_scope``):
every permission check downstream, in the API or in the operations it calls, sees the limit.
The session works too, so the pages' own scripts may call the API; django-ninja checks its CSRF
token on unsafe methods.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, SessionAuth
from ninja.throttling import BaseThrottle

from dashboard import tokens
from dashboard.models import ApiToken

log = logging.getLogger(__name__)


class BearerToken(HttpBearer):
    """``Authorization: Bearer ckd_…``: a personal access token."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken:
        try:
            found = tokens.authenticate(token.strip(), method=request.method or "", path=request.path)
        except tokens.TokenRefused as exc:
            raise AuthenticationError(401, str(exc)) from None
        request.user = found.user
        request.api_token = found  # type: ignore[attr-defined]
        return found


class BrowserSession(SessionAuth):
    """The dashboard's own login session; unsafe methods need the CSRF token."""

    def _get_key(self, request: HttpRequest) -> str | None:
        # Without a logged-in session there is nothing to protect from CSRF: the answer is 401.
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        return super()._get_key(request)

    def authenticate(self, request: HttpRequest, key: str | None):
        user = getattr(request, "user", None)
        return user if user is not None and user.is_authenticated else None


def client_id(request: HttpRequest) -> str:
    """One client for throttling and idempotency keys: the token, else the session's user."""
    token = getattr(request, "api_token", None)
    return f"token:{token.pk}" if token is not None else f"user:{request.user.pk}"


class ClientThrottle(BaseThrottle):
    """At most ``settings.API_THROTTLE_RATE`` (``"N/s|min|hour"``) requests per client.

    A fixed window counted with one atomic ``INCR`` in the shared cache (Redis), so every web
    process counts the same and concurrent threads do not lose counts. When the cache is
    unreachable requests are served, not refused: throttling protects the server, and refusing
    everyone would be the outage it protects against.
    """

    _PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
                "d": 86400, "day": 86400}

    def __init__(self) -> None:
        self._local = threading.local()

    def rate(self) -> tuple[int, int] | None:
        rate = getattr(settings, "API_THROTTLE_RATE", "")
        if not rate:
            return None
        count, _, period = rate.partition("/")
        return int(count), self._PERIODS[period.strip()]

    def allow_request(self, request: HttpRequest) -> bool:
        self._local.wait = None
        rate = self.rate()
        if rate is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"api-throttle:{client_id(request)}:{period}:{window}"
        try:
            try:
                count = cache.incr(key)  # one round trip once the window's counter exists
            except ValueError:
                count = 1 if cache.add(key, 1, timeout=period + 1) else cache.incr(key)
        except Exception:
            log.warning("API throttle: cache unreachable; serving without counting", exc_info=True)
            return True
        if count > limit:
            self._local.wait = max(1, math.ceil((window + 1) * period - now))
            return False
        return True

    def wait(self) -> float | None:
        return getattr(self._local, "wait", None)
