"""The RQ worker class for this dashboard.

RQ's default worker forks a fresh work horse per job. Importing TensorFlow costs about 4 s, so a
worker that imports it only inside the job pays that on every job. This worker imports TensorFlow
once in the parent; every forked horse inherits the loaded modules (copy-on-write).

It also outlives Redis outages. RQ retries while it waits for a job, but Redis going away while
it runs or records one ends RQ's loop and the process. Here the loop waits for Redis and starts
again, however long the outage lasts.

    python manage.py rqworker default --worker-class dashboard.worker.PreloadingWorker
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import connections
from rq.exceptions import StopRequested
from rq.worker import Worker

from dashboard.queue_outage import MAX_RETRY_SECONDS, OUTAGE_ERRORS, OutageBackoff

logger = logging.getLogger("dashboard.worker")


def preload_tensorflow() -> None:
    from persistence.tfruntime import import_tensorflow

    import_tensorflow()  # for its side effect: loaded before the fork


class PreloadingWorker(Worker):
    # RQ doubles its wait while Redis is unreachable up to 60 s; jobs would then sit for up to a
    # minute after Redis is back.
    max_connection_wait_time = MAX_RETRY_SECONDS

    def __init__(self, *args, **kwargs):
        preload_tensorflow()
        super().__init__(*args, **kwargs)
        self._outage: BaseException | None = None

    def fork_work_horse(self, job, queue):
        # A database socket shared between parent and horse would interleave their traffic.
        connections.close_all()
        super().fork_work_horse(job, queue)

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop, run again after a Redis outage ended it; returns as RQ's does."""
        if burst or kwargs.get("max_jobs") or kwargs.get("max_idle_time"):
            # Bounded runs (tests, scripts) end as RQ ends them.
            return super().work(burst, *args, **kwargs)
        worked = False
        backoff = OutageBackoff(logger, f"worker {self.name}")
        while True:
            self._outage = None
            try:
                worked = super().work(burst, *args, **kwargs) or worked
            except OUTAGE_ERRORS as exc:  # Redis went away before the loop started
                self._outage = exc
            if self._shutdown_requested_date is not None or self._outage is None:
                return worked
            try:
                self._wait_for_redis(backoff, self._outage)
            except StopRequested:
                return worked

    def _wait_for_redis(self, backoff: OutageBackoff, exc: BaseException) -> None:
        while True:
            time.sleep(backoff.failed(exc))
            try:
                self.connection.ping()
                # Our registration may have survived (Redis was only unreachable): mark it dead so
                # that the next loop may register the same name again.
                super().register_death()
                break
            except OUTAGE_ERRORS as again:
                exc = again
        backoff.recovered()

    # RQ's loop ends on any exception from these; remember when Redis was the cause.
    def execute_job(self, job, queue):
        return self._noting_outage(super().execute_job, job, queue)

    def heartbeat(self, *args, **kwargs):
        result = self._noting_outage(super().heartbeat, *args, **kwargs)
        self._outage = None  # Redis answered: an earlier error was ridden out by RQ itself
        return result

    def check_for_suspension(self, *args, **kwargs):
        return self._noting_outage(super().check_for_suspension, *args, **kwargs)

    def run_maintenance_tasks(self):
        return self._noting_outage(super().run_maintenance_tasks)

    def _noting_outage(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            self._outage = exc
            raise

    def register_death(self):
        # Called on the way out of RQ's loop. With Redis gone the registration is unreachable (it
        # expires by itself); raising here would end the process instead of letting it wait.
        try:
            super().register_death()
        except OUTAGE_ERRORS as exc:
            self._outage = exc

    def unsubscribe(self):
        try:
            super().unsubscribe()
        except OUTAGE_ERRORS as exc:
            self._outage = exc
            # Still stop the listener thread: the next loop subscribes a new one.
            if self.pubsub_thread:
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)
