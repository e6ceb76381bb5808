"""Scanning a run's directory as a job, the periodic rescan of every run, and the auto-prune it starts."""

from __future__ import annotations

import logging

from django.db import close_old_connections

from dashboard import retention, scanning
from dashboard.models import Job, Run
from dashboard.roots import on_object_storage

from .context import JobContext
from .queue import QueueUnavailable, start

log = logging.getLogger(__name__)


def scan_job(job: Job, ctx: JobContext) -> dict:
    run = Run.objects.get(pk=job.run_id)
    ctx.progress(5, f"Scanning {run.directory}", force=True)
    counts = scanning.scan(run, full=bool(job.params.get("full")))
    ctx.progress(100, f"{counts['checkpoints']} checkpoints found", force=True)
    start_auto_prune(run, counts)
    return counts


def scan_all_runs() -> dict:
    """Periodic rescan of every tracked run (registered with RQ's cron in ``dashboard/cron.py``).

    Runs inline in one worker job rather than one job per run: rescans are incremental and cheap
    when nothing changed, and this keeps the queue readable.
    """
    close_old_connections()
    summary = {}
    for run in Run.objects.all():
        try:
            summary[run.name] = scanning.scan(run)
            start_auto_prune(run, summary[run.name])
        except Exception as exc:  # one broken run must not stop the others being rescanned
            log.exception("periodic scan of %s failed", run.name)
            summary[run.name] = {"error": str(exc)}
    return summary


def start_auto_prune(run: Run, report: dict | None = None) -> int | None:
    """After a scan: start a prune job for a run with ``auto_prune`` on whose policy deletes something.

    Nothing is started while a prune of the run is queued or running, nor when the plan deletes
    nothing (the periodic rescan would otherwise start an empty prune every minute). The job plans
    again when it runs; ``min_age_seconds`` keeps what a live trainer may still be writing.
    """
    if on_object_storage(run.directory):
        return None  # pruning a bucket is not supported yet (see roots.NotOnObjectStorage)
    if not run.auto_prune or run.jobs.filter(kind=Job.PRUNE, status__in=[Job.QUEUED, Job.RUNNING]).exists():
        return None
    try:
        if not retention.plan_retention(run).files_to_delete:
            return None
    except ValueError as exc:  # a policy stored before validation existed, or edited in the admin
        log.warning("auto-prune of %s skipped: %s", run.name, exc)
        return None
    try:
        job = start(Job.PRUNE, run=run, params={"auto": True})
    except QueueUnavailable as exc:
        job = exc.job  # recorded; the reconciler enqueues it once Redis answers
    if report is not None:
        report["auto_prune_job"] = job.pk
    return job.pk
