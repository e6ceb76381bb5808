"""Periodic work, run by RQ's cron scheduler: ``python manage.py rqcron dashboard.cron``.

- Tracked runs are rescanned so that checkpoints written by trainers outside the dashboard appear
  by themselves: idle runs inline, changed ones each in a scan job of its own, never a second
  one while a scan of the run is queued or running (``jobs.scan.scan_all_runs``).
- With ``TRASH_DAYS`` > 0, trash batches older than that are deleted every
  ``TRASH_SWEEP_SECONDS`` (``trash.empty_expired``), each run's audited with the bytes freed.
- Webhook deliveries that are due (retries, and any the queue missed) are handed to the workers
  every ``WEBHOOK_DISPATCH_SECONDS``.
- Jobs are reconciled with RQ: a job whose work horse or worker was killed turns
  ``failed`` with the reason, and a job created while Redis was down is enqueued once it is back.
  RQ declares a dead worker's job abandoned about 90 s after its last heartbeat (the worker's
  60 s grace plus its 30 s monitoring interval); checking every 15 s keeps the whole path under
  two minutes. A dead work horse under a live worker is seen at the next check.

Cron only enqueues: a worker runs these. Each gets a short ``ttl`` so that, while every worker is
busy with a long job, the runs that could not start in time expire instead of piling up.
"""

from django.conf import settings
from rq import cron

from dashboard.jobs import reconcile_jobs, scan_all_runs
from dashboard.trash import empty_expired
from dashboard.webhooks import dispatch_due

RECONCILE_INTERVAL_SECONDS = 15

if settings.SCAN_INTERVAL_SECONDS:
    interval = max(1, int(settings.SCAN_INTERVAL_SECONDS))
    cron.register(
        scan_all_runs,
        queue_name=settings.JOB_QUEUE,
        interval=interval,
        job_timeout=30 * 60,
        ttl=max(60, 2 * interval),
    )

cron.register(
    reconcile_jobs,
    queue_name=settings.JOB_QUEUE,
    interval=RECONCILE_INTERVAL_SECONDS,
    job_timeout=120,
    ttl=60,
    result_ttl=600,
)

cron.register(
    dispatch_due,
    queue_name=settings.JOB_QUEUE,
    interval=settings.WEBHOOK_DISPATCH_SECONDS,
    job_timeout=120,
    ttl=max(30, 3 * settings.WEBHOOK_DISPATCH_SECONDS),
    result_ttl=600,
)

if settings.TRASH_DAYS:
    cron.register(
        empty_expired,
        queue_name=settings.JOB_QUEUE,
        interval=settings.TRASH_SWEEP_SECONDS,
        job_timeout=30 * 60,
        ttl=max(60, settings.TRASH_SWEEP_SECONDS // 2),
        result_ttl=600,
    )
