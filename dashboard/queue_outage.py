"""Riding out a Redis outage in the long-running processes (scheduler, workers, launcher).

Redis may go away for any length of time (a restart, a failover, a full disk). A process that
exits on the first ``ConnectionError`` leaves jobs queued and rescans stopped until someone
notices; these make each process wait, retry with a capped backoff, and go on by itself.
One warning is logged when an outage starts and one line when it ends, not one per retry.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The errors that mean "Redis is not reachable right now", as opposed to a bug or a bad command.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)

FIRST_RETRY_SECONDS = 0.5
# Short enough that work resumes within seconds of Redis returning, long enough not to spin.
MAX_RETRY_SECONDS = 5.0


class OutageBackoff:
    """Delays between reconnection attempts, doubling up to a cap, logged once per outage."""

    def __init__(self, logger: logging.Logger, what: str, *, first: float = FIRST_RETRY_SECONDS,
                 cap: float = MAX_RETRY_SECONDS):
        self.logger = logger
        self.what = what
        self.first = first
        self.cap = cap
        self.down_since: float | None = None
        self._delay = first

    def failed(self, exc: BaseException) -> float:
        """Note a failed attempt; return how long to wait before the next one."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._delay = self.first
            self.logger.warning("Redis is unreachable (%s); %s keeps retrying until it is back", exc, self.what)
        delay = self._delay
        self._delay = min(self._delay * 2, self.cap)
        return delay

    def recovered(self) -> None:
        """Note a successful round trip; logs the end of an outage if there was one."""
        if self.down_since is not None:
            self.logger.warning(
                "Redis is reachable again after %.0f s; %s resumes", time.monotonic() - self.down_since, self.what
            )
            self.down_since = None
            self._delay = self.first
