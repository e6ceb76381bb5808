"""Executing a retention plan as a job (``pruning.prune``), from the page, an auto-prune or ``manage.py prune``."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings

from dashboard import pruning
from dashboard.models import Job, Run

from .context import JobContext


def _prune_progress(ctx: JobContext) -> Callable[[int, int, str], None]:
    delay = getattr(settings, "PRUNE_PROGRESS_DELAY_SECONDS", 0)

    def on_progress(done: int, total: int, message: str) -> None:
        ctx.progress(2 + 96 * done / max(total, 1), message, force=done == total)
        if delay:
            # Fault-injection tests only (settings.PRUNE_PROGRESS_DELAY_SECONDS, 0 in use): slow
            # enough for a test to kill the work horse in the middle of a prune.
            time.sleep(delay)

    return on_progress


def prune_job(job: Job, ctx: JobContext) -> dict:
    """Execute a retention plan (``pruning.prune``): exactly the previewed one, or for an auto-prune the
    stored policy's; a retry of a killed attempt finishes that attempt's plan."""
    run = Run.objects.get(pk=job.run_id)
    ctx.progress(1, f"Planning the prune of {run.name}", force=True)
    result = pruning.prune(run, job, on_progress=_prune_progress(ctx))
    if result.get("resumed_from"):
        ctx.log(f"Finished the plan prune #{result['resumed_from']} had started")
    ctx.progress(100, f"{result['checkpoints_deleted']} checkpoints deleted, {result['kept']} kept", force=True)
    return result
