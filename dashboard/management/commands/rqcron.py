"""RQ's cron scheduler, made to outlive Redis outages: ``python manage.py rqcron dashboard.cron``.

This replaces django-rq's command of the same name (this app comes first in ``INSTALLED_APPS``),
so the usual command line keeps working. django-rq's scheduler exits on the first Redis
``ConnectionError``; rescans and job reconciling then stop until someone restarts it. This one
waits for Redis with a capped backoff and resumes its loop, however long the outage lasts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django_rq.cron import DjangoCronScheduler
from rq.exceptions import SchedulerNotFound, StopRequested

from dashboard.jobs import redis_connection
from dashboard.queue_outage import OUTAGE_ERRORS, OutageBackoff

logger = logging.getLogger("dashboard.scheduler")


class EnqueuedAtDebug(logging.Filter):
    """"Enqueued job reconcile_jobs" every 15 s is routine: DEBUG; the scheduler's other lines as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith("Enqueued job "):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_scheduler_logs(level: int) -> None:
    # RQ applies its logging level only when its logger has no handler of its own yet; Django's
    # LOGGING has given the root one, so the level is set here.
    cron_log = logging.getLogger("rq.cron")
    cron_log.setLevel(level)
    if not any(isinstance(f, EnqueuedAtDebug) for f in cron_log.filters):
        cron_log.addFilter(EnqueuedAtDebug())


class OutageTolerantCronScheduler(DjangoCronScheduler):
    """Runs RQ's scheduler loop again once Redis answers, instead of exiting."""

    def start(self) -> None:
        backoff = OutageBackoff(logger, "the scheduler")
        try:
            while True:
                try:
                    super().start()  # returns only when asked to stop
                    return
                except OUTAGE_ERRORS as exc:
                    delay = backoff.failed(exc)
                # Probe with a ping rather than restarting the loop each time: a restart logs its
                # birth and death, which would flood the log during a long outage.
                while True:
                    time.sleep(delay)
                    try:
                        self.connection.ping()
                        break
                    except OUTAGE_ERRORS as exc:
                        delay = backoff.failed(exc)
                backoff.recovered()
        except (StopRequested, KeyboardInterrupt):
            logger.info("scheduler stopped while waiting for Redis")

    def register_death(self, pipeline=None) -> None:
        # Called on the way out of every loop, including one that Redis just broke: the registry
        # entry is then gone with Redis (or unreachable), and that must not mask the real cause.
        try:
            super().register_death(pipeline)
        except (SchedulerNotFound, *OUTAGE_ERRORS):
            pass


class Command(BaseCommand):
    help = "Run the periodic rescans and job reconciling (RQ cron), riding out Redis outages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "config_path", nargs="?", default="dashboard.cron",
            help="Cron configuration module or file (default: dashboard.cron).",
        )
        parser.add_argument(
            "--logging-level", "-l", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], default="INFO",
            help="Logging level of RQ's scheduler (default: INFO).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        level = getattr(logging, options["logging_level"])
        quiet_scheduler_logs(level)
        scheduler = OutageTolerantCronScheduler(logging_level=level)
        scheduler.load_config_from_file(options["config_path"])
        # Short, explicit socket timeouts: a Redis that hangs instead of refusing must look like
        # an outage too, not block the loop forever.
        scheduler.connection = redis_connection()
        self.stdout.write(f"Starting cron scheduler with {len(scheduler.get_jobs())} jobs")
        scheduler.start()
