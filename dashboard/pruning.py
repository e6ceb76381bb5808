"""Pruning: carrying out a retention plan on a run, and pinning what no plan may delete.

One prune per run at a time: a prune holds the run's lock (``locks.run_lock``) from its claim
to its end. Pins and make-latest, which change what a plan may delete, refuse while one runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from django.db import models, transaction
from django.utils import timezone

from persistence import pruning as engine
from persistence import statefile
from persistence.retention import Plan

from . import locks, summaries, trash, webhooks
from .locks import lock_row
from .models import AuditEvent, Checkpoint, Job, Run
from .retention import plan_retention, retention_policy
from .roots import checkpoint_directory

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser
    Progress = Callable[[float, str], object]


def running_prune(run: Run, *, exclude: Job | None = None) -> Job | None:
    """The prune that holds this run now, if any: one prune per run at a time.

    Holding is the run's lock (``locks.run_lock``), which a prune takes when it claims the run
    and keeps until it ends, however it ends: the lock dies with its process (``kill -9``
    included), on any machine. The job row only names the holder in messages. A prune row whose
    claim was never released while nobody holds the lock belongs to a prune that died; if it is
    still ``running`` it is marked failed on the way.
    """
    claims = _unreleased_claims(run, exclude=exclude)
    if not locks.is_locked(run):
        _fail_dead_claims(claims)
        return None
    if claims:
        return Job.objects.defer("result").get(pk=claims[0])
    # Held by a prune that has not recorded its claim yet (it is doing so under the row lock).
    others = run.jobs.filter(kind=Job.PRUNE).defer("result").order_by("-pk")
    if exclude is not None:
        others = others.exclude(pk=exclude.pk)
    return (others.filter(status__in=[Job.RUNNING, Job.QUEUED]).first() or others.first()
            or Job(kind=Job.PRUNE, run=run, status=Job.RUNNING))


def _unreleased_claims(run: Run, *, exclude: Job | None = None) -> list[int]:
    """Ids of the prunes of ``run`` that claimed it and did not record letting go, newest first."""
    # A canceled prune's process may still be deleting for the moment it takes to stop it.
    recent = timezone.now() - dt.timedelta(minutes=10)
    rows = run.jobs.filter(kind=Job.PRUNE).filter(
        models.Q(status=Job.RUNNING) | models.Q(status=Job.CANCELED, ended_at__gte=recent)
    )
    if exclude is not None:
        rows = rows.exclude(pk=exclude.pk)
    # Only the holder is read: a running prune's result also holds its whole plan.
    return [
        pk for pk, holder in rows.order_by("-pk").values_list("id", "result__holder")
        if isinstance(holder, dict) and not holder.get("released")
    ]


def _fail_dead_claims(claims: list[int]) -> None:
    if claims:
        dead = list(Job.objects.filter(pk__in=claims, status=Job.RUNNING).values_list("id", flat=True))
        Job.objects.filter(pk__in=dead, status=Job.RUNNING).update(
            status=Job.FAILED, ended_at=timezone.now(),
            error="The process running this prune died (killed?) before it finished; retry it to "
                  "finish the plan.",
        )
        webhooks.emit(webhooks.JOB_FAILED, Job.objects.filter(pk__in=dead, status=Job.FAILED))


@contextlib.contextmanager
def claimed(run: Run, job: Job) -> Iterator[None]:
    """Hold the run for ``job`` (the one prune of the run) during the block, or raise ``Run.PruneRefused``.

    The lock is taken under the run's row lock, which every check of "is a prune running" that
    leads to a write (scans, pins, make-latest) takes too: such a check never sees the run free
    while a prune is claiming it. The row lock is held only for the claim: a long transaction
    would hide the job's progress and, on SQLite, stop every other writer. The run lock is held
    until the block ends, however it ends.
    """
    stack = contextlib.ExitStack()
    with transaction.atomic():
        lock_row(run)
        try:
            stack.enter_context(locks.run_lock(run))
        except locks.RunLocked:
            other = running_prune(run, exclude=job)
            raise Run.PruneRefused(
                f"Another prune of run {run.name} is running (job #{other.pk if other else '?'}); "
                "wait for it to finish."
            ) from None
        try:
            _fail_dead_claims(_unreleased_claims(run, exclude=job))
            # Who holds the run, for people reading the job; whether it still does is the lock's to say.
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "claimed_at": timezone.now().isoformat()}
            job.result = {**(job.result or {}), "holder": holder}
            Job.objects.filter(pk=job.pk).update(result=job.result)
        except BaseException:
            stack.close()  # the claim was not recorded: let go of the run at once
            raise
    with stack:
        try:
            yield
        finally:
            job.result = {**job.result, "holder": {**holder, "released": True}}
            Job.objects.filter(pk=job.pk).update(result=job.result)


def check_no_prune_running(run: Run, action: str) -> None:
    """Raise ``ValueError`` (for users) while a prune holds the run; call under the run's row lock."""
    running = running_prune(run)
    if running is not None:
        raise ValueError(f"A prune of run {run.name} is running (job #{running.pk}); {action} when it has finished.")


def prune(run: Run, job: Job, *, on_progress: Progress | None = None) -> dict:
    """The body of a prune job (and of ``manage.py prune``): claim the run, plan, execute, record.

    ``job.params``: ``fingerprint`` (the previewed plan: refuse unless the run still plans to
    exactly that), ``overrides`` (rules replacing the stored policy for this prune), ``auto``
    (auto-prune after a scan: no preview to match). A retry of an attempt that recorded its plan
    but did not finish (killed mid-way) finishes that very plan. Raises ``Run.PruneRefused``.
    """
    with claimed(run, job):
        params = job.params or {}
        policy = retention_policy(run, **(params.get("overrides") or {}))
        unfinished = _unfinished_plan(job)
        if unfinished is not None:
            attempt = unfinished
            plan = Plan.from_dict(attempt.result["plan"])
            policy_used = attempt.result.get("policy")
            _check_still_deletable(run, plan)
            resumed_from = attempt.pk
        else:
            plan = plan_retention(run, policy=policy)
            wanted = params.get("fingerprint")
            if wanted and wanted != plan.fingerprint:
                raise Run.PruneRefused("The run changed since the preview — preview again.")
            policy_used, resumed_from = asdict(policy), None
        # Recorded before anything is deleted: a retry of this job finishes exactly this plan.
        job.result = {
            **(job.result or {}), "plan": plan.to_dict(), "policy": policy_used, "resumed_from": resumed_from,
        }
        Job.objects.filter(pk=job.pk).update(result=job.result)
        outcome = apply_plan(
            run, plan, actor=job.requested_by, job=job, policy=policy_used, on_progress=on_progress,
            auto=bool(params.get("auto")), resumed_from=resumed_from,
        )
    return {**job.result, **outcome}


def _check_still_deletable(run: Run, plan: Plan) -> None:
    # A plan finished after a crash was checked when it started; what the user protected since
    # (pinned, made latest, exported, aliased) must still stop it.
    doomed = plan.deleted_prefixes
    protected = (
        run.checkpoints.filter(prefix__in=doomed)
        .filter(models.Q(pinned=True) | ~models.Q(latest_in=[]) | models.Q(exports__isnull=False)
                | models.Q(aliases__isnull=False))
        .values_list("prefix", flat=True)
    )
    names = sorted(set(protected))
    if names:
        raise Run.PruneRefused(
            f"The unfinished plan deletes {', '.join(names[:5])}, which is now pinned, latest, exported or aliased; "
            "preview again."
        )


def apply_plan(run: Run, plan: Plan, *, actor: User | None = None, job: Job | None = None, policy: dict | None = None,
               on_progress: Progress | None = None, auto: bool = False, resumed_from: int | None = None) -> dict:
    """Execute ``plan`` on this run's directory and record it: rows, state files, audit.

    Every file the plan deletes must be a file of a recorded checkpoint of this run, and the
    directory must still be inside ``CHECKPOINT_ROOTS``; the engine refuses anything outside
    the directory and rewrites the state files atomically before deleting. Rows of deleted
    checkpoints become ``pruned``, their ``files`` listing only what stayed on disk (a ``.meta``
    kept for later checkpoints). Files that could not be deleted are reported by raising
    ``ValueError`` after recording what was done; running the plan again finishes it.
    """
    # A run in a bucket is pruned through the same engine: conditional state-object writes and
    # batch deletes in place of atomic renames and unlinks.
    directory = str(checkpoint_directory(run.directory, objects=True, action="Pruning"))
    ids = _check_plan_files(run, plan)
    # Those found now and those the last scan recorded: a listing that failed just now (a
    # bucket's request) must not hide a state file that names what the plan deletes.
    found = statefile.find_state_files(directory)
    recorded = [s["name"] for s in run.state_files or [] if isinstance(s, dict) and s.get("name")]
    state_files = statefile.order_state_file_names(list(dict.fromkeys([*found, *recorded])))
    # A retry finishing a killed attempt's plan puts the files in that attempt's batch.
    batch = trash.batch_for(resumed_from or (job.pk if job else None)) if trash.enabled() else None
    result = engine.execute_plan(directory, plan, state_files=state_files, on_progress=on_progress,
                                 trash_batch=batch)
    gone = set(result.deleted) | set(result.already_gone)
    with transaction.atomic():
        # The lock a scan takes to store what it found: a scan that read the directory
        # mid-prune then sees these rows pruned, and leaves them so.
        lock_row(run)
        pruned = _mark_pruned(plan, ids, gone, job, trash_batch=batch)
        summaries.refresh(run)
        # A prune keeps every state file's latest; what changes is the anchor of the hours rule,
        # which the engine wrote into the default state file (no need to re-read them all).
        if statefile.DEFAULT_STATE_FILE in result.state_files and plan.last_preserved_timestamp:
            run.last_preserved_timestamp = plan.last_preserved_timestamp
            run.save(update_fields=["last_preserved_timestamp"])
        # The plan's figure once it is done (part of it may have been done by a killed attempt);
        # what this run measured when some files are left.
        freed = result.bytes_freed if result.failed else plan.bytes_freed
        execution = {
            "deleted_files": len(result.deleted), "already_gone": result.already_gone,
            "failed": result.failed, "measured_bytes_freed": result.bytes_freed,
            "state_files": result.state_files, "problems": result.problems, "trash_batch": batch,
        }
        event = None
        if plan.files_to_delete or not auto:
            who = "Auto-prune" if auto else "Prune"
            done = f"moved to the trash ({trash.TRASH_DIR}/{batch})" if batch else "deleted"
            event = AuditEvent.record(
                "prune",
                f"{who} of {run.name}: {pruned} checkpoint{'s' if pruned != 1 else ''} {done}, "
                f"{plan.kept_count} kept",
                # Trashed bytes are freed, and audited, when the trash is emptied.
                actor=actor, run=run, bytes_freed=0 if batch else freed,
                details={
                    "job": job.pk if job else None, "fingerprint": plan.fingerprint, "auto": auto,
                    "resumed_from": resumed_from, "policy": policy,
                    "plan": plan.to_dict(), "execution": execution,
                    **({"trash": {"batch": batch, "bytes": freed}} if batch else {}),
                },
            )
        if event is not None and plan.files_to_delete:
            webhooks.emit(webhooks.RETENTION_PRUNED, event)
    if result.failed:
        names = ", ".join(f"{n} ({why})" for n, why in list(result.failed.items())[:5])
        raise ValueError(f"{len(result.failed)} file(s) could not be deleted: {names}. Run the prune again "
                         "once that is fixed; it finishes the plan.")
    return {
        "fingerprint": plan.fingerprint, "checkpoints_deleted": pruned, "kept": plan.kept_count,
        "bytes_freed": freed, "execution": execution, "audit_event": event.pk if event else None,
        "trash_batch": batch,
    }


def _check_plan_files(run: Run, plan: Plan) -> dict[str, int]:
    """The row id of each checkpoint the plan deletes files of, by prefix (what ``_mark_pruned``
    updates: rows are never deleted, so the ids stay good); ``ValueError`` for a stray file."""
    # Never delete a file that belongs to no recorded checkpoint (a plan read back from a job's
    # JSON is only as good as that JSON).
    doomed = [d.prefix for d in plan.decisions if d.delete_files]
    recorded = set()
    ids = {}
    for start in range(0, len(doomed), 5000):
        chunk = run.checkpoints.filter(prefix__in=doomed[start : start + 5000]).values_list("prefix", "id", "files")
        for prefix, pk, files_ in chunk:
            ids[prefix] = pk
            recorded.update(f["name"] for f in files_ or [])
    stray = [name for name in plan.files_to_delete if name not in recorded]
    if stray:
        raise ValueError(f"The plan names {len(stray)} file(s) no recorded checkpoint of {run.name} has, "
                         f"e.g. {stray[0]}; refusing to delete anything.")
    return ids


def _mark_pruned(plan: Plan, ids: dict[str, int], gone: set[str], job: Job | None, *,
                 trash_batch: str | None = None) -> int:
    """Rows whose ``.index`` is gone become ``pruned``; each keeps only its files still on disk.

    ``ids``: the row id of each checkpoint the plan deletes files of, by prefix.
    """
    when = timezone.now().strftime("%Y-%m-%d %H:%M UTC")
    by_job = f" (job #{job.pk})" if job else ""
    verb = f"Moved to the trash ({trash.TRASH_DIR}/{trash_batch}/)" if trash_batch else "Deleted"
    emptied: dict[tuple, list[int]] = {}
    pruned = 0
    for decision in plan.decisions:
        if decision.keep or not decision.delete_files or decision.prefix not in ids:
            continue
        removed = [name for name in decision.delete_files if name in gone]
        if f"{decision.prefix}.index" in removed:
            pruned += 1
        why = "; ".join(r for r in decision.reasons if r.startswith("deleted: "))
        note = f"{verb} by a prune on {when}{by_job}: {why}"
        if decision.keep_meta_only or len(removed) < len(decision.delete_files):
            # Rare (a kept-alive .meta, a file that could not be deleted): one row at a time.
            row = Checkpoint.objects.only("id", "files", "status").get(pk=ids[decision.prefix])
            left = [f for f in row.files if f["name"] not in removed]
            if decision.keep_meta_only:
                note += "; its .meta stays: a kept checkpoint restores with it"
            values = {"files": left, "problems": [note]}
            if f"{decision.prefix}.index" not in {f["name"] for f in left}:
                values.update(status=Checkpoint.PRUNED, latest_in=[])
            Checkpoint.objects.filter(pk=row.pk).update(**values)
        else:
            emptied.setdefault((note,), []).append(ids[decision.prefix])
    for (note,), pks in emptied.items():
        # One UPDATE per distinct note (usually one), in chunks SQLite accepts.
        for start in range(0, len(pks), 5000):
            Checkpoint.objects.filter(pk__in=pks[start : start + 5000]).may_become(Checkpoint.PRUNED).update(
                status=Checkpoint.PRUNED, files=[], latest_in=[], problems=[note]
            )
    return pruned


def pin(checkpoint: Checkpoint, reason: str = "", *, actor: User | None = None) -> None:
    """Keep this checkpoint whatever the retention policy says (audited). ``ValueError`` for users."""
    if not checkpoint.on_disk:
        raise ValueError(f"{checkpoint.prefix} is {checkpoint.status}: only a checkpoint on disk can be pinned.")
    _set_pin(checkpoint, True, reason.strip(), actor=actor, summary=f"Pinned {checkpoint.prefix}: {reason.strip()}")


def unpin(checkpoint: Checkpoint, reason: str = "", *, actor: User | None = None) -> None:
    """Let the retention policy decide about this checkpoint again (audited, with why it was pinned)."""
    was = checkpoint.pin_reason
    why = f" ({reason.strip()})" if reason.strip() else ""
    _set_pin(checkpoint, False, "", actor=actor,
             summary=f"Unpinned {checkpoint.prefix}{why}; it was pinned for: {was or '—'}")


def _set_pin(checkpoint: Checkpoint, pinned: bool, reason: str, *, actor, summary: str) -> None:
    with transaction.atomic():
        # Under the run's row lock: a prune that already planned must not delete what is pinned now.
        lock_row(checkpoint.run)
        check_no_prune_running(checkpoint.run, "pin or unpin")
        checkpoint.pinned, checkpoint.pin_reason = pinned, reason
        checkpoint.save(update_fields=["pinned", "pin_reason"])
        AuditEvent.record("pin" if pinned else "unpin", summary[:500], actor=actor, run=checkpoint.run,
                          checkpoint=checkpoint, details={"reason": reason})


def _unfinished_plan(job: Job) -> Job | None:
    """The earlier attempt of this prune (its ``retry_of`` chain) that recorded a plan and did not finish it."""
    seen, current = set(), job.retry_of
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        result = current.result or {}
        if "execution" in result:
            return None  # that attempt finished its plan: this retry plans afresh
        if "plan" in result:
            return current
        current = current.retry_of
    return None
