"""Periodic work, run by RQ's cron scheduler: ``python manage.py rqcron dashboard.cron``.

Tracked runs are rescanned so that checkpoints written by trainers outside the dashboard appear
by themselves.
"""

from django.conf import settings
from rq import cron

from dashboard.jobs import scan_all_runs

if settings.SCAN_INTERVAL_SECONDS:
    cron.register(
        scan_all_runs,
        queue_name=settings.JOB_QUEUE,
        interval=max(1, int(settings.SCAN_INTERVAL_SECONDS)),
        job_timeout=30 * 60,
    )
