"""Which body runs a job of each kind and mode, and the one entry point that runs it.

Every row is enqueued as ``run_job(pk)``; ``run_inline`` runs a row in the calling process (a
management command) through the same claim and the same recording of the outcome.
"""

from __future__ import annotations

from django.db import close_old_connections

from dashboard.models import Job

from .artifacts import freeze_job, partial_restore_job, verify_job
from .compare import compare_job, step_over_step_job
from .context import JobBody, JobContext, claim, execute, record_failure, skipped
from .prune import prune_job
from .save import resave_job, save_job
from .scan import scan_job

# ``params["mode"]`` picks a second body of a kind where the work shares the kind's timeout, its
# permission and its place in the filters: re-saving a subset writes a checkpoint as a save does.
DEFAULT_MODE = ""
RESAVE_MODE = "resave"
PARTIAL_RESTORE_MODE = "partial"
STEP_OVER_STEP_MODE = "steps"

JOB_FUNCTIONS: dict[tuple[str, str], JobBody] = {
    (Job.SCAN, DEFAULT_MODE): scan_job,
    (Job.SAVE, DEFAULT_MODE): save_job,
    (Job.SAVE, RESAVE_MODE): resave_job,
    (Job.RESTORE, DEFAULT_MODE): verify_job,
    (Job.RESTORE, PARTIAL_RESTORE_MODE): partial_restore_job,
    (Job.FREEZE, DEFAULT_MODE): freeze_job,
    (Job.PRUNE, DEFAULT_MODE): prune_job,
    (Job.COMPARE, DEFAULT_MODE): compare_job,
    (Job.COMPARE, STEP_OVER_STEP_MODE): step_over_step_job,
}


def body_for(job: Job) -> JobBody:
    """The body registered for the row's kind and mode; a mode the kind does not have runs its plain body."""
    mode = (job.params or {}).get("mode")
    return JOB_FUNCTIONS.get((job.kind, mode if isinstance(mode, str) else DEFAULT_MODE)) or JOB_FUNCTIONS[
        (job.kind, DEFAULT_MODE)
    ]


def _registered_body(job: Job, ctx: JobContext) -> dict:
    # Looked up inside the run, so that a row no body is registered for fails with the reason.
    return body_for(job)(job, ctx)


def run_job(job_pk: int) -> dict:
    """What RQ runs for every job: claim the row, run its body, record the outcome.

    The exception of a failed body is re-raised so RQ records the failure as well.
    """
    close_old_connections()
    job = claim(job_pk)
    if job is None:
        # Canceled before it started, or a duplicate delivery of a row that already ran.
        return skipped(job_pk)
    return execute(job, _registered_body)


class NotQueued(RuntimeError):
    """``run_inline`` was given a row that is not ``queued`` (already claimed, or ended)."""


def run_inline(job: Job) -> dict:
    """Run a ``queued`` row that was never enqueued, in this process, exactly as a worker would.

    Raises what the body raised, once it is recorded on the row.
    """
    claimed = claim(job.pk)
    if claimed is None:
        raise NotQueued(f"Job #{job.pk} is not queued; it cannot be run here.")
    try:
        return execute(claimed, _registered_body)
    except Exception:
        raise  # already recorded
    except BaseException as exc:
        # Interrupted (Ctrl-C in a command): the row must not stay running with nobody behind it.
        record_failure(claimed, exc)
        raise
