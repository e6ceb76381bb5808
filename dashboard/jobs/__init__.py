"""Background jobs: thin functions that take ids, call ``persistence/`` and record on our ``Job`` row.

- ``queue``: the Redis client, ``start`` (create the row and enqueue it), ``enqueue``, ``withdraw``.
  When Redis is down the row stays ``queued`` without an RQ id, ``QueueUnavailable`` tells the
  page, and ``reconcile_jobs`` enqueues it once Redis answers again.
- ``context``: claiming a row (``queued`` -> ``running``, once), ``JobContext`` for progress and
  cancellation, and recording ``finished`` or ``failed``.
- ``registry``: the body of each kind and mode, and ``run_job``, the one entry point RQ runs;
  ``run_inline`` runs a row the same way inside a management command.
- ``scan``, ``save``, ``artifacts``, ``prune``, ``compare``: the bodies, each
  ``body(job, ctx) -> dict``.
- ``actions``: cancel and retry. A canceled queued job is taken out of RQ at once; a running body
  notices through ``JobContext.should_stop``, and one that does not stop within
  ``CANCEL_GRACE_SECONDS`` has its work horse stopped by ``reconcile_jobs``.
- ``reconcile``: turns rows whose work horse or worker died into ``failed`` with the reason, and
  enqueues rows created while Redis was down.
"""

from .actions import cancel_job, retry_job
from .context import JobBody, JobCanceled, JobContext
from .queue import (
    CANCEL_GRACE_SECONDS,
    ENQUEUE_GRACE_SECONDS,
    RUN_JOB,
    TIMEOUTS,
    QueueUnavailable,
    enqueue,
    get_queue,
    redis_connection,
    start,
    timeout_for,
    withdraw,
)
from .reconcile import reconcile_jobs
from .registry import (
    JOB_FUNCTIONS,
    PARTIAL_RESTORE_MODE,
    RESAVE_MODE,
    STEP_OVER_STEP_MODE,
    body_for,
    run_inline,
    run_job,
)
from .scan import scan_all_runs, start_auto_prune, start_rescan

__all__ = [
    "CANCEL_GRACE_SECONDS", "ENQUEUE_GRACE_SECONDS", "JOB_FUNCTIONS", "PARTIAL_RESTORE_MODE", "RESAVE_MODE",
    "RUN_JOB", "STEP_OVER_STEP_MODE", "TIMEOUTS", "JobBody", "JobCanceled", "JobContext", "QueueUnavailable",
    "body_for", "cancel_job", "enqueue", "get_queue", "reconcile_jobs", "redis_connection", "retry_job",
    "run_inline", "run_job", "scan_all_runs", "start", "start_auto_prune", "start_rescan", "timeout_for", "withdraw",
]
