"""Background jobs: thin functions that take ids, call ``persistence/`` and record on our ``Job`` row.

Our ``Job`` row is the truth the pages show; RQ's own records expire. Each RQ job is enqueued with
``job_id = "job-<pk>"`` so that either side can always find the other.

Life of a job (DESIGN §3, §7):

- ``start`` creates the row (``queued``) and enqueues it. When Redis is down the row stays
  ``queued`` without an RQ id, ``QueueUnavailable`` tells the page, and ``reconcile_jobs``
  enqueues it once Redis answers again.
- ``job_body`` claims the row (``queued`` → ``running``, atomically, so a job enqueued twice runs
  once), runs the body and records ``finished`` with its result or ``failed`` with the error and
  traceback. The first verdict wins: a row that was canceled, or failed by the reconciler, while
  the body ran keeps that status (the body's result is still stored).
- ``Job.cancel`` marks the row ``canceled``; a queued RQ job is canceled at once, a running body
  notices through ``JobContext.should_stop``, and one that does not stop within
  ``CANCEL_GRACE_SECONDS`` has its work horse stopped through RQ.
- ``reconcile_jobs`` (every few seconds, from ``dashboard/cron.py``) turns rows whose work horse
  or worker died into ``failed`` with the reason, and enqueues rows created while Redis was down.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from . import artifacts, comparing, pruning, retention, scanning
from .models import Checkpoint, Comparison, Job, Run

log = logging.getLogger(__name__)

# Explicit per kind: RQ's default of 180 s is far too short for a big freeze or a long training.
# ``settings.JOB_TIMEOUTS`` (kind -> seconds) overrides single kinds, e.g. for a deployment with
# very long trainings, or a test that wants a timeout within seconds.
TIMEOUTS = {
    Job.SCAN: 30 * 60,
    Job.SAVE: 12 * 60 * 60,
    Job.RESTORE: 60 * 60,
    Job.FREEZE: 2 * 60 * 60,
    Job.PRUNE: 60 * 60,
    Job.COMPARE: 2 * 60 * 60,
}

# The web process talks to Redis only to enqueue and cancel. These bound how long a page can wait
# on a Redis that is down or unreachable (redis-py's defaults retry ten times).
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_SOCKET_TIMEOUT = 5.0
REDIS_RETRIES = 1

# A ``queued`` row without an RQ id younger than this may still be being enqueued by ``start``.
ENQUEUE_GRACE_SECONDS = 10
# A canceled job whose body has not stopped by itself after this long gets its work horse stopped.
CANCEL_GRACE_SECONDS = 20
LOG_LINES_KEPT = 1000


class QueueUnavailable(Exception):
    """Redis could not be reached; the ``Job`` row exists and is enqueued once Redis is back."""

    user_message = (
        "The job queue is unavailable right now. The job is recorded and will start "
        "when the queue is reachable again."
    )

    def __init__(self, job: Job):
        super().__init__("The job queue is unavailable")
        self.job = job


class JobCanceled(Exception):  # noqa: N818 - reads as what happened, like TrainingCancelled
    """Raised by a job body that noticed ``should_stop()``; the row keeps its status."""


def rq_job_id(job_pk: int) -> str:
    return f"job-{job_pk}"


def job_pk_from_rq_id(rq_id: str) -> int | None:
    prefix, _, pk = rq_id.partition("-")
    return int(pk) if prefix == "job" and pk.isdigit() else None


def timeout_for(kind: str) -> int:
    overrides = getattr(settings, "JOB_TIMEOUTS", None) or {}
    return int(overrides.get(kind, TIMEOUTS[kind]))


def redis_connection():
    """A Redis client for our queue with short, explicit timeouts.

    django-rq builds clients from ``URL`` with redis-py's defaults and ignores the socket options
    in ``RQ_QUEUES``, so an outage could hold a page for many seconds; this one fails fast.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    config = settings.RQ_QUEUES[settings.JOB_QUEUE]
    return redis.Redis.from_url(
        config["URL"],
        socket_connect_timeout=min(config.get("SOCKET_CONNECT_TIMEOUT") or REDIS_CONNECT_TIMEOUT, REDIS_CONNECT_TIMEOUT),
        socket_timeout=min(config.get("SOCKET_TIMEOUT") or REDIS_SOCKET_TIMEOUT, REDIS_SOCKET_TIMEOUT),
        retry=Retry(NoBackoff(), REDIS_RETRIES),
    )


def get_queue(connection=None):
    import django_rq

    # Enqueue at once, not at the end of a surrounding transaction (django-rq's default): callers
    # commit the Job row first, and a Redis outage must surface here, where it can be reported.
    return django_rq.get_queue(
        settings.JOB_QUEUE, commit_mode="auto", connection=connection or redis_connection()
    )


def enqueue(job: Job, *, queue=None) -> None:
    """Hand an existing ``Job`` row to RQ. Raises ``RedisError`` when Redis is down.

    Safe to repeat: the RQ id is derived from the row, and ``job_body`` runs a row only once.
    """
    func = JOB_FUNCTIONS[job.kind]
    (queue or get_queue()).enqueue(
        func,
        job.pk,
        job_id=rq_job_id(job.pk),
        job_timeout=timeout_for(job.kind),
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"{job.kind} #{job.pk}",
    )
    Job.objects.filter(pk=job.pk).update(rq_job_id=rq_job_id(job.pk), message="")
    job.rq_job_id, job.message = rq_job_id(job.pk), ""


def start(
    kind: str,
    *,
    run: Run | None = None,
    checkpoint: Checkpoint | None = None,
    params: dict | None = None,
    user=None,
    retry_of: Job | None = None,
) -> Job:
    """Create a ``Job`` row and enqueue it.

    When Redis is down the row stays ``queued`` with a message saying so, and
    ``QueueUnavailable`` is raised so the page can tell the user plainly; the reconciler
    enqueues it once Redis is back. A freeze is refused with ``Checkpoint.FreezeRunning`` (naming
    the job) while another freeze writing the same file is queued or running.
    """
    with transaction.atomic():
        if kind == Job.FREEZE and checkpoint is not None:
            artifacts.check_no_freeze_running(checkpoint, (params or {}).get("outputs") or [])
        job = Job.objects.create(
            kind=kind,
            run=run,
            checkpoint=checkpoint,
            params=params or {},
            retry_of=retry_of,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
    try:
        enqueue(job)
    except RedisError as exc:
        log.warning("queue unavailable for job %s: %s", job.pk, exc)
        job.message = "Waiting for the job queue: it will start when the queue is reachable again."
        job.save(update_fields=["message"])
        raise QueueUnavailable(job) from exc
    return job


def withdraw(job: Job) -> None:
    """Take a canceled job out of the queue, or stop its work horse if it is running.

    Best effort: with Redis down nothing happens here, and ``job_body`` / ``reconcile_jobs`` still
    keep a canceled row from running or stop it later.
    """
    if not job.rq_job_id:
        return
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob
    from rq.job import JobStatus

    try:
        connection = redis_connection()
        rq_job = RQJob.fetch(job.rq_job_id, connection=connection)
        status = rq_job.get_status()
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            rq_job.cancel()
        elif status == JobStatus.STARTED and job.kind not in COOPERATIVE_KINDS:
            # Bodies that never look at should_stop() are stopped at once; the others get the
            # chance to stop between two steps, without a half-written file (see reconcile_jobs).
            send_stop_job_command(connection, job.rq_job_id)
    except (NoSuchJobError, InvalidJobOperation):
        pass
    except RedisError as exc:
        log.warning("could not withdraw job %s from the queue: %s", job.pk, exc)


class JobContext:
    """What a running job body uses to report progress and to notice cancellation."""

    # Progress writes are throttled: a training loop may report thousands of times.
    MIN_INTERVAL = 0.5
    STOP_CHECK_INTERVAL = 1.0

    def __init__(self, job: Job):
        self.job = job
        self._last_write = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    def progress(self, percent: float, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.MIN_INTERVAL:
            return
        self._last_write = now
        pct = max(0, min(100, int(percent)))
        Job.objects.filter(pk=self.job.pk).update(progress=pct, message=message[:500])

    def log(self, line: str, **partial_result: Any) -> None:
        """Append a log line; keyword arguments also update the partial result, in the same write."""
        self.job.log.append(f"{timezone.now():%H:%M:%S} {line}")
        del self.job.log[:-LOG_LINES_KEPT]
        fields: dict[str, Any] = {"log": self.job.log}
        if partial_result:
            self.job.result = fields["result"] = {**(self.job.result or {}), **partial_result}
        Job.objects.filter(pk=self.job.pk).update(**fields)

    def partial_result(self, **values: Any) -> None:
        """Store part of the result while the job runs (what a retry needs if this one dies)."""
        self.job.result = {**(self.job.result or {}), **values}
        Job.objects.filter(pk=self.job.pk).update(result=self.job.result)

    def should_stop(self) -> bool:
        """True once the row is no longer ``running``: canceled, or failed by the reconciler."""
        if self._stop:
            return True
        now = time.monotonic()
        if now - self._last_stop_check < self.STOP_CHECK_INTERVAL:
            return False
        self._last_stop_check = now
        self._stop = not Job.objects.filter(pk=self.job.pk, status=Job.RUNNING).exists()
        return self._stop


def _error_text(job: Job, exc: BaseException) -> str:
    from rq.timeouts import JobTimeoutException

    if isinstance(exc, JobTimeoutException):
        from rq import get_current_job

        # The limit the job was enqueued with, which the enqueuing process chose.
        current = get_current_job()
        limit = current.timeout if current is not None and current.timeout else timeout_for(job.kind)
        return (
            f"Timed out: the {job.kind} job ran longer than its limit of {_duration(limit)} "
            f"and was stopped. ({exc})"
        )
    return f"{type(exc).__name__}: {exc}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def job_body(func: Callable[[Job, JobContext], dict[str, Any] | None]) -> Callable[[int], dict]:
    """Wrap a job body: mark the row running, then finished with its result or failed with the error.

    The exception is re-raised so RQ records the failure as well.
    """

    @functools.wraps(func)
    def run(job_pk: int) -> dict:
        close_old_connections()
        claimed = Job.objects.filter(pk=job_pk, status=Job.QUEUED).update(
            status=Job.RUNNING, started_at=timezone.now(), error="", traceback="", message="Started"
        )
        if not claimed:
            # Canceled before it started, or a duplicate delivery of a row that already ran.
            status = Job.objects.filter(pk=job_pk).values_list("status", flat=True).first()
            return {"skipped": True, "status": status}
        job = Job.objects.get(pk=job_pk)
        ctx = JobContext(job)
        try:
            result = func(job, ctx) or {}
        except JobCanceled:
            result = dict(job.result or {})
        except Exception as exc:
            Job.objects.filter(pk=job_pk, status=Job.RUNNING).update(
                status=Job.FAILED,
                error=_error_text(job, exc)[:5000],
                traceback=traceback.format_exc(),
                ended_at=timezone.now(),
            )
            raise
        finished = Job.objects.filter(pk=job_pk, status=Job.RUNNING).update(
            status=Job.FINISHED, progress=100, result=result, ended_at=timezone.now()
        )
        if not finished:
            # Canceled (or failed by the reconciler) while finishing: keep that verdict, and what
            # the body did before it stopped.
            Job.objects.filter(pk=job_pk).update(result=result)
        return result

    return run


# --- scan -----------------------------------------------------------------------------------


@job_body
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


# --- save -----------------------------------------------------------------------------------


def _saved_by_attempts(job: Job) -> list[dict]:
    """Checkpoints earlier attempts of this job (the ``retry_of`` chain) recorded, oldest first."""
    saved, seen, current = [], set(), job.retry_of
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        saved.extend((current.result or {}).get("saved", []))
        current = current.retry_of
    return saved


def _resume_point(job: Job, run: Run) -> Checkpoint | None:
    """The newest checkpoint an earlier attempt of this save wrote that is still whole on disk.

    A retried save continues from there instead of starting over (and instead of being refused
    because its first checkpoints already exist).
    """
    prefixes = [s["prefix"] for s in _saved_by_attempts(job)]
    if not prefixes:
        return None
    rows = run.checkpoints.on_disk().filter(prefix__in=prefixes).exclude(status=Checkpoint.CORRUPT)
    for row in rows.order_by("-step"):
        if row.step is not None and os.path.exists(row.path + ".index"):
            return row
    return None


def _metric_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float))


def _check_source_files(checkpoint: Checkpoint) -> None:
    from persistence.training import TrainingError

    try:
        checkpoint.check_files_at_use()
    except ValueError as exc:  # files.UnsafeFile
        raise TrainingError(f"cannot read {checkpoint.prefix}: {exc}") from None


@job_body
def save_job(job: Job, ctx: JobContext) -> dict:
    """Train a registered recipe and record every checkpoint the moment the Saver writes it."""
    from persistence.recipes import load_recipe
    from persistence.training import SaverOptions, TrainingCancelled, TrainingError, train

    from . import saving
    from .roots import checkpoint_directory

    params = job.params
    run = Run.objects.get(pk=job.run_id)
    recipe_path = params.get("recipe", "")
    if recipe_path not in settings.CHECKPOINT_RECIPES:
        raise TrainingError(f"recipe {recipe_path!r} is not registered in CHECKPOINT_RECIPES")
    directory = str(checkpoint_directory(run.directory))
    options = SaverOptions.from_dict(params.get("options") or {})
    recipe = load_recipe(recipe_path)

    if job.retry_of_id:
        # Rows first agree with the disk: an earlier attempt killed inside Saver.save may have
        # left rows of checkpoints the Saver had already deleted.
        scanning.scan(run)

    restore_from = None
    if params.get("restore_from"):
        source = run.checkpoints.on_disk().filter(pk=params["restore_from"]).first()
        if source is None:
            raise TrainingError(
                f"the checkpoint to continue from ({params.get('restore_from_prefix') or params['restore_from']}) "
                "is no longer on disk"
            )
        _check_source_files(source)
        restore_from = source.path
    first_step = int(params.get("start_step") or 0)
    target_step = int(params.get("target_step") or first_step + int(params["steps"]))
    total = max(1, target_step - first_step)

    resume = _resume_point(job, run) if job.retry_of_id else None
    if resume is not None:
        _check_source_files(resume)
        restore_from = resume.path
        ctx.log(f"Continuing from {resume.prefix}, written by an earlier attempt")
    done_before = (resume.step - first_step) if resume is not None else 0
    steps = total - done_before
    saved_rows: list[dict] = list(_saved_by_attempts(job)) if resume is not None else []
    if steps <= 0:
        ctx.log("Nothing left to do: an earlier attempt reached the last step")
        return {"saved": [], "final_step": resume.step, "target_step": target_step, "resumed_from": resume.prefix}

    own_saved: list[dict] = []
    pruned: list[str] = []
    kept_from_rotation: dict[str, str] = {}
    # max_to_keep may only rotate out what this job (or an earlier attempt of it) wrote, and
    # never a checkpoint a protection rule keeps; the guard reads `written` at every question.
    written = {s["prefix"] for s in _saved_by_attempts(job)}
    guard = saving.rotation_guard(run, own=written, state_file=options.state_file)

    def on_saved(saved) -> None:
        note = (
            f"Deleted by TensorFlow's Saver (max_to_keep={options.max_to_keep}) when save job "
            f"#{job.pk} wrote {saved.prefix}."
        )
        checkpoint = scanning.record_saved(run, saved, pruned_note=note, actor=job.requested_by)
        written.add(saved.prefix)
        entry = {"prefix": saved.prefix, "step": saved.step, "id": checkpoint.pk, **saved.metrics}
        own_saved.append(entry)
        pruned.extend(saved.deleted)
        kept_from_rotation.update(saved.kept_from_rotation)
        line = f"Saved {saved.prefix} ({_metric_text(saved.metrics)})"
        if saved.deleted:
            line += f"; the Saver's max_to_keep deleted {', '.join(saved.deleted)}"
        if saved.kept_from_rotation:
            kept = "; ".join(f"{p} ({why})" for p, why in saved.kept_from_rotation.items())
            line += f"; kept out of max_to_keep's rotation: {kept}"
        # What a retry continues from: stored the moment the row exists.
        ctx.log(line, saved=own_saved, target_step=target_step, kept_from_rotation=kept_from_rotation)

    def on_progress(done: int, of: int, loss: float) -> None:
        overall = done_before + done
        ctx.progress(100 * overall / total, f"Step {overall}/{total} · loss {loss:.4f}")

    try:
        result = train(
            directory,
            recipe,
            steps=steps,
            save_every=int(params["save_every"]),
            options=options,
            restore_from=restore_from,
            seed=int(params.get("seed") or 0),
            on_saved=on_saved,
            on_progress=on_progress,
            should_stop=ctx.should_stop,
            # A retry rewrites what a killed attempt may have left after its last recorded save.
            overwrite=job.retry_of_id is not None,
            rotation_guard=guard,
        )
    except TrainingCancelled as exc:
        ctx.log(f"Stopped at step {exc.step} on request")
        return {
            "canceled": True, "saved": own_saved, "stopped_at_step": exc.step, "target_step": target_step,
            "pruned_by_saver": pruned, "kept_from_rotation": kept_from_rotation,
        }
    last = own_saved[-1] if own_saved else None
    loss = result.final_metrics.get("loss", float("nan"))
    ctx.progress(100, f"Step {total}/{total} · loss {loss:.4f}", force=True)
    return {
        "directory": directory,
        "recipe": recipe_path,
        "start_step": result.start_step,
        "final_step": result.final_step,
        "target_step": target_step,
        "steps_run": result.steps_run,
        "saved": own_saved,
        "all_attempts_saved": [s["prefix"] for s in saved_rows] + [s["prefix"] for s in own_saved],
        "latest": last["prefix"] if last else None,
        "pruned_by_saver": pruned,
        "kept_from_rotation": kept_from_rotation,
        "initial_metrics": result.initial_metrics,
        "final_metrics": result.final_metrics,
        "restored_from": os.path.basename(result.restored_from) if result.restored_from else None,
        "resumed_from": resume.prefix if resume is not None else None,
        "initialized_variables": result.initialized_variables if restore_from else [],
        "elapsed_seconds": round(result.elapsed_seconds, 3),
    }


@job_body
def resave_job(job: Job, ctx: JobContext) -> dict:
    """Write a subset of a checkpoint's variables (optionally renamed) under a new prefix."""
    from persistence.training import TrainingError, checkpoint_files, resave_subset

    from .roots import checkpoint_directory

    params = job.params
    run = Run.objects.get(pk=job.run_id)
    directory = str(checkpoint_directory(run.directory))
    source = Checkpoint.objects.filter(pk=job.checkpoint_id, run=run).first()
    if source is None or source.status in (Checkpoint.PRUNED, Checkpoint.MISSING):
        raise TrainingError("the source checkpoint is no longer on disk")
    _check_source_files(source)
    new_prefix = params["new_prefix"]

    existing = checkpoint_files(directory, new_prefix)
    if existing and job.retry_of_id is not None:
        # Files an earlier attempt of this job left. resave_subset moves the .index in last, so
        # with an .index the copy is whole and only its row is missing; without one it is debris.
        if new_prefix + ".index" in existing:
            from persistence.training import SavedCheckpoint, step_from_prefix

            written = SavedCheckpoint(
                prefix=new_prefix, path=os.path.join(directory, new_prefix), step=step_from_prefix(new_prefix),
                metrics={}, files=existing,
            )
            checkpoint = scanning.record_saved(run, written, source=source, actor=job.requested_by)
            ctx.log(f"{new_prefix} was already written by an earlier attempt; recorded it")
            return _resave_result(checkpoint, source)
        # A re-save writes data shards and then the .index, never a .meta: only shards can be an
        # earlier attempt's debris. Anything else under the prefix is someone else's (a .meta kept
        # for later checkpoints) and must survive the retry.
        debris = [name for name in existing if ".data-" in name]
        foreign = sorted(set(existing) - set(debris))
        if foreign:
            raise TrainingError(
                f"{new_prefix} now has files this job did not write ({', '.join(foreign)}); choose another prefix"
            )
        for name in debris:
            os.remove(os.path.join(directory, name))
        ctx.log(f"Removed {len(debris)} partial file(s) an earlier attempt left")

    ctx.progress(10, f"Reading {source.prefix}", force=True)
    saved = resave_subset(
        source.path,
        directory,
        new_prefix,
        variables=params.get("variables"),
        drop_optimizer_slots=bool(params.get("drop_optimizer_slots")),
        rename=params.get("rename") or None,
    )
    checkpoint = scanning.record_saved(run, saved, source=source, actor=job.requested_by)
    ctx.log(f"Wrote {new_prefix}: {len(saved.variables)} variables, {saved.size_bytes} bytes")
    ctx.progress(100, f"Wrote {new_prefix}", force=True)
    return _resave_result(checkpoint, source)


def _resave_result(checkpoint: Checkpoint, source: Checkpoint) -> dict:
    return {
        "checkpoint": checkpoint.prefix,
        "checkpoint_id": checkpoint.pk,
        "source": source.prefix,
        "variables": [v["name"] for v in checkpoint.variables],
        "size_bytes": checkpoint.size_bytes,
        "source_size_bytes": source.size_bytes,
    }


# --- reconcile ------------------------------------------------------------------------------


def _dead_worker_reason(rq_job, connection) -> str | None:
    """Why the worker running ``rq_job`` cannot be alive, or None when it may be."""
    from rq.worker import Worker

    if not rq_job.worker_name:
        return None
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + rq_job.worker_name, connection=connection)
    if worker is None:
        return "Its worker stopped sending heartbeats and is gone (killed, or lost its connection)."
    # Same machine: a dead process is certain at once, no need to wait for heartbeats to expire.
    if worker.hostname == socket.gethostname() and worker.pid and not _process_alive(worker.pid):
        return f"Its worker process ({worker.pid}) died."
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        # A killed process whose parent has not reaped it yet still answers kill(0): a zombie.
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _failure_reason(rq_job) -> str:
    result = rq_job.latest_result()
    text = (getattr(result, "exc_string", "") or "").strip()
    if "Work-horse terminated unexpectedly" in text:
        signal_part = text.split("(signal", 1)[1].split(")", 1)[0].strip() if "(signal" in text else ""
        how = f" by signal {signal_part}" if signal_part else ""
        return (
            f"The work horse running this job was killed{how} (kill -9, or out of memory) before it "
            "could record an outcome."
        )
    if "AbandonedJobError" in text:
        return "Its worker died without finishing it (RQ found the job abandoned)."
    if "JobTimeoutException" in text:
        return "Timed out: the job ran longer than its limit and was stopped."
    last = text.splitlines()[-1] if text else "no details"
    return f"RQ reports the job failed: {last}"


def _fail(job: Job, reason: str) -> bool:
    updated = Job.objects.filter(pk=job.pk, status__in=[Job.QUEUED, Job.RUNNING]).update(
        status=Job.FAILED, error=reason, ended_at=timezone.now(), message=""
    )
    if updated:
        log.warning("job %s marked failed: %s", job.pk, reason)
    return bool(updated)


def reconcile_jobs(*, now: dt.datetime | None = None) -> dict:
    """Make ``Job`` rows agree with what RQ knows (DESIGN §7). Run every few seconds by cron.

    - ``queued`` rows that never reached Redis (created during an outage) or that Redis lost
      (restarted without persistence) are enqueued.
    - ``queued``/``running`` rows whose RQ job failed, was stopped or is abandoned (work horse or
      whole worker killed) become ``failed`` (``canceled`` for a stop) with the reason.
    - canceled rows whose body still runs after ``CANCEL_GRACE_SECONDS`` get their horse stopped.
    """
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    close_old_connections()
    now = now or timezone.now()
    summary: dict[str, Any] = {"enqueued": [], "failed": [], "canceled": [], "stopped": []}
    try:
        connection = redis_connection()
        connection.ping()
        queue = get_queue(connection)
        # Executions whose heartbeat expired (their worker died) go to RQ's failed registry.
        started = StartedJobRegistry(queue=queue)
        started.cleanup()
    except RedisError as exc:
        summary["queue"] = f"unavailable: {exc}"
        return summary

    open_rows = Job.objects.filter(status__in=[Job.QUEUED, Job.RUNNING]).only(
        "id", "kind", "status", "rq_job_id", "created_at", "started_at"
    )
    for job in open_rows:
        if not job.rq_job_id:
            if job.status == Job.QUEUED and job.created_at < now - dt.timedelta(seconds=ENQUEUE_GRACE_SECONDS):
                enqueue(job, queue=queue)
                summary["enqueued"].append(job.pk)
            continue
        try:
            rq_job = RQJob.fetch(job.rq_job_id, connection=connection)
        except NoSuchJobError:
            rq_job = None
        if rq_job is None:
            if job.status == Job.QUEUED:
                enqueue(job, queue=queue)  # Redis lost it (restarted without persistence)
                summary["enqueued"].append(job.pk)
            elif _fail(job, "The queue lost this job while it was running (Redis was restarted or flushed)."):
                summary["failed"].append(job.pk)
            continue
        status = rq_job.get_status(refresh=False)
        if status == JobStatus.FAILED:
            if _fail(job, _failure_reason(rq_job)):
                summary["failed"].append(job.pk)
        elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
            if Job.objects.filter(pk=job.pk, status__in=[Job.QUEUED, Job.RUNNING]).update(
                status=Job.CANCELED, ended_at=now, message=f"{status.value.capitalize()} in the queue"
            ):
                summary["canceled"].append(job.pk)
        elif status == JobStatus.FINISHED:
            # The body records its outcome before RQ does, so this row's write was lost, unless
            # this was a duplicate delivery that found the row already claimed.
            if (rq_job.return_value() or {}).get("skipped"):
                continue
            if _fail(job, "The queue says the job finished, but its outcome was never recorded."):
                summary["failed"].append(job.pk)
        elif status == JobStatus.STARTED:
            reason = _dead_worker_reason(rq_job, connection)
            if reason and _fail(job, reason):
                summary["failed"].append(job.pk)

    # Canceled rows whose body did not stop by itself (it does not check, or is stuck in one step).
    cutoff = now - dt.timedelta(seconds=CANCEL_GRACE_SECONDS)
    running_ids = {pk for pk in map(job_pk_from_rq_id, started.get_job_ids(cleanup=False)) if pk}
    lingering = Job.objects.filter(pk__in=running_ids, status=Job.CANCELED, ended_at__lt=cutoff)
    for job in lingering.only("id", "rq_job_id"):
        try:
            send_stop_job_command(connection, job.rq_job_id)
            summary["stopped"].append(job.pk)
        except (NoSuchJobError, InvalidJobOperation):
            pass
    return {k: v for k, v in summary.items() if v}


# Kinds whose bodies check ``should_stop`` between steps (and stop without leaving a half-written
# file); the others have their work horse stopped through RQ as soon as they are canceled.
COOPERATIVE_KINDS = {Job.SAVE, Job.COMPARE}


def save_kind_job(job_pk: int) -> dict:
    """Run a ``save`` job: training (``save_job``) or re-saving a subset (``resave_job``).

    Re-saving writes a checkpoint the way a save does; it shares the kind (its timeout, its place
    in the filters) and is told apart by ``params["mode"] == "resave"``.
    """
    close_old_connections()
    params = Job.objects.filter(pk=job_pk).values_list("params", flat=True).first() or {}
    body = resave_job if params.get("mode") == RESAVE_MODE else save_job
    return body(job_pk)


RESAVE_MODE = "resave"

JOB_FUNCTIONS: dict[str, Callable[[int], dict]] = {
    Job.SCAN: scan_job,
    Job.SAVE: save_kind_job,
}

__all__ = [
    "CANCEL_GRACE_SECONDS", "JOB_FUNCTIONS", "TIMEOUTS", "JobCanceled", "JobContext", "QueueUnavailable",
    "enqueue", "get_queue", "job_body", "reconcile_jobs", "redis_connection", "resave_job", "save_job",
    "save_kind_job", "scan_all_runs", "scan_job", "start", "timeout_for", "withdraw",
]


# --- compare ---------------------------------------------------------------------------------
# One kind, two bodies told apart by params (like save/resave): a pair of checkpoints
# (``a``, ``b``) or step over step through a run's newest checkpoints (``mode: steps``).

STEP_OVER_STEP_MODE = "steps"


def _compare_progress(ctx: JobContext) -> Callable[[int, int, str], None]:
    def on_progress(done: int, total: int, name: str) -> None:
        if ctx.should_stop():
            raise JobCanceled
        ctx.progress(100 * done / max(total, 1), f"{done} of {total} variables · {name}", force=done == total)

    return on_progress


@job_body
def compare_job(job: Job, ctx: JobContext) -> dict:
    """Compare checkpoints ``params["a"]`` and ``params["b"]`` and store the ``Comparison``."""
    sides = []
    for key in ("a", "b"):
        checkpoint = Checkpoint.objects.select_related("run").filter(pk=job.params.get(key)).first()
        if checkpoint is None:
            raise Comparison.CannotCompare(f"checkpoint #{job.params.get(key)} no longer exists")
        sides.append(checkpoint)
    a, b = sides
    ctx.progress(1, f"Reading {a.prefix} and {b.prefix}", force=True)
    comparison = comparing.compute(a, b, job=job, on_progress=_compare_progress(ctx))
    summary = comparison.summary
    return {
        "comparison": comparison.pk,
        "a": a.pk,
        "b": b.pk,
        **{k: summary.get(k) for k in ("variables", "changed", "max_relative_change", "max_relative_change_variable")},
    }


@job_body
def step_over_step_job(job: Job, ctx: JobContext) -> dict:
    """Relative change per variable between a run's consecutive checkpoints; the heatmap is the result."""
    run = Run.objects.get(pk=job.run_id)
    last = int(job.params.get("last", 50))
    ctx.progress(1, f"Reading the newest {last} checkpoints of {run.name}", force=True)
    return comparing.step_over_step(run, last=last, on_progress=_compare_progress(ctx))


def compare_kind_job(job_pk: int) -> dict:
    """Run a ``compare`` job: a pair (``compare_job``) or step over step (``step_over_step_job``)."""
    close_old_connections()
    params = Job.objects.filter(pk=job_pk).values_list("params", flat=True).first() or {}
    body = step_over_step_job if params.get("mode") == STEP_OVER_STEP_MODE else compare_job
    return body(job_pk)


JOB_FUNCTIONS[Job.COMPARE] = compare_kind_job


# --- restore / verify and freeze (issue 4) -------------------------------------------------
# Thin: the work is ``artifacts.verify`` / ``artifacts.freeze``, shared with ``manage.py verify``
# and ``manage.py freeze``.


def verification_summary(verification: dict) -> dict:
    """A verify job's result: the verdict without the per-variable table (that stays on the row)."""
    return {
        "status": verification["status"],
        "message": verification["message"],
        "failed_tensor": verification.get("failed_tensor"),
        "variables": len(verification.get("variables") or []),
        "bytes_read": verification.get("bytes_read", 0),
        "restore": verification.get("restore"),
        "read_error": verification.get("read_error"),
    }


@job_body
def verify_job(job: Job, ctx: JobContext) -> dict:
    """Verify checkpoint ``job.checkpoint`` (``params["output"]``: a tensor to run after restoring)."""
    checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").get(pk=job.checkpoint_id)
    ctx.progress(1, f"Verifying {checkpoint.prefix}", force=True)
    verification = artifacts.verify(checkpoint, output=(job.params or {}).get("output", ""), on_progress=ctx.progress)
    if "read_error" in verification:  # only there when this verify could not read the checkpoint
        verdict = f"could not read it ({verification['read_error']['message']}); status left {verification['status']}"
    else:
        verdict = verification["status"]
    ctx.progress(100, f"{checkpoint.prefix}: {verdict}", force=True)
    return verification_summary(verification)


@job_body
def freeze_job(job: Job, ctx: JobContext) -> dict:
    """Freeze ``job.checkpoint`` with ``params`` outputs / clear_devices / variables allow- and deny-list."""
    params = job.params or {}
    checkpoint = Checkpoint.objects.select_related("run", "meta_source__run").get(pk=job.checkpoint_id)
    ctx.progress(1, f"Freezing {checkpoint.prefix}", force=True)
    export = artifacts.freeze(
        checkpoint,
        outputs=params.get("outputs") or [],
        clear_devices=params.get("clear_devices", True),
        variables_allowlist=params.get("variables_allowlist") or None,
        variables_denylist=params.get("variables_denylist") or None,
        user=job.requested_by,
        on_progress=ctx.progress,
        job=job,
    )
    verdict = "verified" if export.verified else "NOT verified"
    ctx.progress(100, f"{export.display_name}.pb written, {verdict} (max abs diff {export.max_abs_diff})", force=True)
    return {"export": export.as_json()}


PARTIAL_RESTORE_MODE = "partial"


@job_body
def partial_restore_job(job: Job, ctx: JobContext) -> dict:
    """Restore ``params["variables"]`` (renamed by ``params["name_map"]``) into ``params["recipe"]``'s graph."""
    params = job.params or {}
    checkpoint = Checkpoint.objects.select_related("run").get(pk=job.checkpoint_id)
    ctx.progress(5, f"Restoring part of {checkpoint.prefix} into {params.get('recipe')}", force=True)
    return artifacts.partial_restore(checkpoint, recipe_path=params.get("recipe", ""), variables=params.get("variables"),
                                      name_map=params.get("name_map"))


def restore_kind_job(job_pk: int) -> dict:
    """Run a ``restore`` job: verify (``verify_job``) or partial restore (``partial_restore_job``)."""
    close_old_connections()
    params = Job.objects.filter(pk=job_pk).values_list("params", flat=True).first() or {}
    body = partial_restore_job if params.get("mode") == PARTIAL_RESTORE_MODE else verify_job
    return body(job_pk)


JOB_FUNCTIONS[Job.RESTORE] = restore_kind_job
JOB_FUNCTIONS[Job.FREEZE] = freeze_job


# --- prune (issue 5) ---------------------------------------------------------------------------


def _prune_progress(ctx: JobContext) -> Callable[[int, int, str], None]:
    delay = getattr(settings, "PRUNE_PROGRESS_DELAY_SECONDS", 0)

    def on_progress(done: int, total: int, message: str) -> None:
        ctx.progress(2 + 96 * done / max(total, 1), message, force=done == total)
        if delay:
            # Fault-injection tests only (settings.PRUNE_PROGRESS_DELAY_SECONDS, 0 in use): slow
            # enough for a test to kill the work horse in the middle of a prune.
            time.sleep(delay)

    return on_progress


@job_body
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


JOB_FUNCTIONS[Job.PRUNE] = prune_job
