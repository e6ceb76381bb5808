"""The trash of prunes: with ``TRASH_DAYS`` > 0 a prune moves its files into the run's trash
(``persistence/trash.py``) instead of deleting them; a maintainer may restore a batch until it is
emptied, ``TRASH_DAYS`` after the prune, by the scheduler (``empty_expired``) or by
``manage.py empty_trash``.

Restoring brings the files back and nothing else: the state file is not rewritten (TensorFlow's
``latest_checkpoint`` is unchanged), and the rows become present again only when a scan finds the
files (``pruned`` may become ``present``, never ``missing``). Restoring and emptying take the run's
lock, as a prune does: none of the three ever works on a run's files at the same time as another.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections

from persistence import storage
from persistence import trash as engine
from persistence.trash import TRASH_DIR, TrashError

from . import locks
from .models import AuditEvent, Run
from .roots import run_location

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser

__all__ = ["TRASH_DIR", "TrashError", "TrashedBatch", "batch_for", "batches", "empty_all_runs", "empty_run",
           "enabled", "restore"]

log = logging.getLogger(__name__)
DAY = 86400.0


def enabled() -> bool:
    """Whether prunes put their files in the trash (``TRASH_DAYS`` > 0) rather than deleting them."""
    return settings.TRASH_DAYS > 0


def batch_for(job_pk: int | None) -> str:
    """The trash batch of the prune job ``job_pk`` (a prune without a job: one per second)."""
    return f"prune-{job_pk}" if job_pk else f"prune-at-{int(time.time())}"


def job_of(batch: str) -> int | None:
    """The prune job a batch came from, when its name says so."""
    number = batch.removeprefix("prune-")
    return int(number) if number != batch and number.isdigit() else None


@dataclass(frozen=True)
class TrashedBatch:
    """A batch as the pages show it."""

    name: str
    job_id: int | None
    trashed_at: dt.datetime
    empties_at: dt.datetime | None  # None while TRASH_DAYS is 0: only the command empties it
    files: int
    bytes: int


def batches(run: Run) -> tuple[list[TrashedBatch], str]:
    """The run's trash batches, oldest first, and a problem to show instead when they cannot be listed."""
    try:
        found = engine.list_batches(str(run_location(run.directory)))
    except (OSError, ValueError) as exc:
        return [], f"The trash of this run cannot be read: {exc}"
    days = settings.TRASH_DAYS
    shown = []
    for batch in found:
        at = dt.datetime.fromtimestamp(batch.trashed_at, tz=dt.UTC)
        shown.append(TrashedBatch(batch.name, job_of(batch.name), at, at + dt.timedelta(days=days) if days else None,
                                  len(batch.files), batch.bytes))
    return shown, ""


def has_batch(run: Run, batch: str) -> bool:
    """Whether ``batch`` is still in the run's trash (what "Restore" needs)."""
    try:
        return engine.batch_exists(str(run_location(run.directory)), batch)
    except (OSError, ValueError):
        return False


def restore(run: Run, batch: str, *, actor: User | None = None) -> engine.RestoreResult:
    """Move a trash batch back into the run (never over a file of the same name); audited.

    Raises ``ValueError`` with a message for users: no such batch, or a prune (or another
    restore, or the trash being emptied) holds the run. The rows change with the next scan.
    """
    engine.check_batch_name(batch)
    directory = str(run_location(run.directory))
    try:
        with locks.run_lock(run):
            result = engine.restore(directory, batch)
            # The listing changed under the last scan's stamp: the next scan must read it.
            Run.objects.filter(pk=run.pk).update(directory_stamp="")
    except locks.RunLocked:
        raise ValueError(f"A prune of {run.name} is running, or its trash is being restored or emptied; "
                         "try again when it has finished.") from None
    refused = f", {len(result.refused)} left in the trash (a file of the same name is back)" if result.refused else ""
    failed = f", {len(result.failed)} failed" if result.failed else ""
    AuditEvent.record(
        "trash-restore",
        f"Restored {len(result.restored)} file{'s' if len(result.restored) != 1 else ''} of {run.name} "
        f"from {TRASH_DIR}/{batch}{refused}{failed}"[:500],
        actor=actor, run=run, details={**result.to_dict(), "job": job_of(batch)},
    )
    return result


def empty_run(run: Run, *, days: float, now: float | None = None) -> engine.EmptyResult | None:
    """Delete the run's trash batches at least ``days`` old; audited with the bytes freed.

    None when the run is busy (a prune, a restore): the next sweep tries again.
    """
    directory = str(run_location(run.directory))
    try:
        with locks.run_lock(run):
            result = engine.empty(directory, older_than=days * DAY, now=now)
    except locks.RunLocked:
        return None
    if result.emptied or result.failed:
        AuditEvent.record(
            "trash-empty",
            f"Emptied the trash of {run.name}: {len(result.emptied)} batch{'es' if len(result.emptied) != 1 else ''}, "
            f"{result.files} file{'s' if result.files != 1 else ''}"
            + (f"; {len(result.failed)} could not be deleted" if result.failed else ""),
            run=run, bytes_freed=result.bytes_freed, details={**result.to_dict(), "days": days},
        )
    return result


def empty_all_runs(*, days: float | None = None, now: float | None = None, runs: list[Run] | None = None) -> dict:
    """``empty_run`` for every run (or ``runs``): what the scheduler and ``manage.py empty_trash`` run.

    ``days`` defaults to ``TRASH_DAYS``. One run whose trash cannot be read does not stop the others.
    """
    days = settings.TRASH_DAYS if days is None else days
    summary: dict[str, dict] = {}
    for run in Run.objects.all() if runs is None else runs:
        try:
            result = empty_run(run, days=days, now=now)
        except (OSError, ValueError, storage.StorageError) as exc:
            log.warning("emptying the trash of %s failed: %s", run.name, exc)
            summary[run.name] = {"error": str(exc)}
            continue
        if result is None:
            summary[run.name] = {"skipped": "the run is busy (a prune or a restore); next time"}
        elif result.emptied or result.failed or result.kept:
            summary[run.name] = result.to_dict()
    return summary


def empty_expired() -> dict:
    """The scheduler's entry (``dashboard/cron.py``): empty what is older than ``TRASH_DAYS``."""
    close_old_connections()
    return empty_all_runs()
