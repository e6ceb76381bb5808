"""Scanning a run's directory as a job, the periodic rescan of every run, and the auto-prune it starts."""

from __future__ import annotations

import logging

from django.db import close_old_connections, transaction
from django.utils import timezone

from dashboard import retention, scanning
from dashboard.locks import lock_row
from dashboard.models import EventFile, Job, Run
from dashboard.roots import checkpoint_directory, on_object_storage
from persistence import discovery

from .context import JobContext
from .queue import QueueUnavailable, enqueue_or_report, start

log = logging.getLogger(__name__)

ACTIVE = (Job.QUEUED, Job.RUNNING)


def scan_job(job: Job, ctx: JobContext) -> dict:
    run = Run.objects.get(pk=job.run_id)
    ctx.progress(5, f"Scanning {run.directory}", force=True)
    counts = scanning.scan(run, full=bool(job.params.get("full")))
    ctx.progress(100, f"{counts['checkpoints']} checkpoints found", force=True)
    start_auto_prune(run, counts)
    return counts


def scan_all_runs() -> dict:
    """Periodic rescan of every tracked run (registered with RQ's cron in ``dashboard/cron.py``).

    A run whose directory is unchanged since its last scan (``discovery.directory_stamp``) is
    rescanned here, inline: that lists nothing, records the scan time of all of them at once and
    reads only what trainers appended to event files, so a sweep over a thousand idle runs stays
    one cheap job. A run in a bucket is scanned inline: its listing is its stamp. A run whose
    directory changed gets a scan job of its own (``start_rescan``), so one big run does not hold up the sweep of
    the others, and the sweep never starts a second scan of a run whose scan is still queued or
    running: scans that take longer than the interval do not pile up behind each other. A run
    skipped now is looked at again by the next sweep.
    """
    close_old_connections()
    busy = set(
        Job.objects.filter(kind=Job.SCAN, status__in=ACTIVE, run__isnull=False).values_list("run_id", flat=True)
    )
    with_event_files = set(EventFile.objects.values_list("run_id", flat=True).distinct())
    summary: dict[str, dict] = {}
    unchanged = []
    for run in Run.objects.all():
        if run.pk in busy:
            summary[run.name] = {"skipped": "a scan of this run is queued or running"}
            continue
        if on_object_storage(run.directory):
            # A bucket has no directory stamp: its scan lists the run (one request per 1,000 keys)
            # and compares the listing with the last one, reading nothing more when it is the same.
            try:
                summary[run.name] = scanning.scan(run)
                start_auto_prune(run, summary[run.name])
            except Exception as exc:
                log.exception("periodic scan of %s failed", run.name)
                summary[run.name] = {"error": str(exc)}
            continue
        try:
            checkpoint_directory(run.directory)
            stamp = discovery.directory_stamp(run.directory)
        except Exception as exc:  # one broken run must not stop the others being rescanned
            log.exception("periodic scan of %s failed", run.name)
            summary[run.name] = {"error": str(exc)}
            continue
        if stamp and stamp == run.directory_stamp:
            unchanged.append(run)
            continue
        job = start_rescan(run)
        summary[run.name] = {"scan_job": job.pk} if job else {"skipped": "a scan of this run is queued or running"}
    scanning.mark_scanned(unchanged, now=timezone.now())
    for run in unchanged:
        try:
            summary[run.name] = scanning.rescan_unchanged(run, has_event_files=run.pk in with_event_files,
                                                          marked=True)
            start_auto_prune(run, summary[run.name])
        except Exception as exc:
            log.exception("periodic scan of %s failed", run.name)
            summary[run.name] = {"error": str(exc)}
    return summary


def start_rescan(run: Run) -> Job | None:
    """Start a scan job for ``run`` unless a scan of it is queued or running; None when one is.

    The check and the new row are one transaction under the run's row lock (``SELECT ... FOR
    UPDATE`` on PostgreSQL; on SQLite the IMMEDIATE transaction holds the write lock), so two
    schedulers racing for the same run start one job between them. A scan a user starts is not
    held back this way (they asked for it), but it does hold back the next periodic one.
    """
    with transaction.atomic():
        lock_row(run)
        if Job.objects.filter(run=run, kind=Job.SCAN, status__in=ACTIVE).exists():
            return None
        job = Job.objects.create(kind=Job.SCAN, run=run, params={"periodic": True})
    try:
        enqueue_or_report(job)
    except QueueUnavailable:
        pass  # recorded, and it still counts as queued: the reconciler enqueues it once Redis answers
    return job


def start_auto_prune(run: Run, report: dict | None = None) -> int | None:
    """After a scan: start a prune job for a run with ``auto_prune`` on whose policy deletes something.

    Nothing is started while a prune of the run is queued or running, nor when the plan deletes
    nothing (the periodic rescan would otherwise start an empty prune every minute). The job plans
    again when it runs; ``min_age_seconds`` keeps what a live trainer may still be writing.
    """
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
