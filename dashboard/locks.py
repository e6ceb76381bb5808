"""The locks that order writers of one run.

Two kinds, for two durations:

- ``lock_row(run)``: the run's row lock, taken inside a short transaction by every writer of the
  run's rows (scan stores, save jobs, pins, make-latest, the prune's claim and its bookkeeping).
  On PostgreSQL it is ``SELECT ... FOR UPDATE``; on SQLite the IMMEDIATE transaction already
  holds the database's write lock.
- ``run_lock(run)``: held by a prune for its whole duration (minutes), outside any transaction.
  It belongs to the database connection (PostgreSQL: a session-level advisory lock) or to an
  open file (SQLite, which is one machine by definition: ``flock`` on a file per run), so the
  operating system or the database server frees it the moment its holder dies, ``kill -9``
  included. Nobody has to decide whether a recorded process is still alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connections, router

if TYPE_CHECKING:
    from .models import Run

# The first key of the advisory lock: keeps our run ids apart from any other advisory lock
# taken on the same database.
ADVISORY_NAMESPACE = zlib.crc32(b"dashboard.run") & 0x7FFFFFFF

# A try that fails is tried again this long: a moment's check by another process (a page asking
# "is a prune running?") must not refuse a prune, and the lock of a holder that has just died is
# freed only once the server (or kernel) has noticed, which on a busy machine takes a moment.
# A real holder holds for far longer.
TRY_SECONDS = 2.0


class RunLocked(Exception):  # noqa: N818 - reads as what happened
    """Another process holds the run's lock."""


def lock_row(run: Run) -> None:
    """Take the run's row lock; call inside ``transaction.atomic()``."""
    type(run).objects.select_for_update().filter(pk=run.pk).first()


@contextlib.contextmanager
def run_lock(run: Run, *, wait: bool = False) -> Iterator[None]:
    """Hold the run's lock for the duration of the block, or raise ``RunLocked``.

    ``wait``: block until the holder lets go, instead of giving up after ``TRY_SECONDS``.
    The lock is the process's: an exception, a return or the process's death all free it.
    """
    alias = router.db_for_write(type(run))
    if connections[alias].vendor == "postgresql":
        holder = _AdvisoryLock(alias, run.pk)
    else:
        holder = _FileLock(alias, run.pk)
    holder.acquire(wait=wait)
    try:
        yield
    finally:
        holder.release()


def is_locked(run: Run) -> bool:
    """Whether some process holds the run's lock now (this one included)."""
    alias = router.db_for_write(type(run))
    if connections[alias].vendor == "postgresql":
        return _AdvisoryLock(alias, run.pk).held_elsewhere()
    return _FileLock(alias, run.pk).held_elsewhere()


class _AdvisoryLock:
    """A session-level advisory lock on a connection of its own.

    Not on Django's connection: that one may be closed between queries (``CONN_MAX_AGE``, the
    job plumbing) and would take the lock with it. The server frees the lock when this
    connection ends, which the death of the process does at once.
    """

    def __init__(self, alias: str, run_id: int):
        self.alias, self.run_id = alias, run_id
        self.connection = None

    def acquire(self, *, wait: bool) -> None:
        wrapper = connections[self.alias]
        self.connection = wrapper.get_new_connection(wrapper.get_connection_params())
        self.connection.autocommit = True
        try:
            if wait:
                self._execute("SELECT pg_advisory_lock(%s::integer, %s::integer)")
                return
            deadline = time.monotonic() + TRY_SECONDS
            while not self._execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)"):
                if time.monotonic() >= deadline:
                    raise RunLocked(f"run #{self.run_id} is locked")
                time.sleep(0.02)
        except BaseException:
            self.connection.close()
            self.connection = None
            raise

    def release(self) -> None:
        if self.connection is not None:
            try:
                self._execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)")
            finally:
                self.connection.close()  # frees the lock even if the unlock failed
                self.connection = None

    def held_elsewhere(self) -> bool:
        # Read from the lock table rather than by taking the lock for a moment: a check must
        # never make a prune starting at that moment believe the run is taken.
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 2)",
                [ADVISORY_NAMESPACE, self.run_id],
            )
            return bool(cursor.fetchone()[0])

    def _execute(self, sql: str) -> object:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [ADVISORY_NAMESPACE, self.run_id])
            return cursor.fetchone()[0]


class _FileLock:
    """``flock`` on ``VAR_DIR/locks/<database>-run<id>.lock``; the kernel frees it with the process.

    The file name carries the database's, so that two databases on one machine (test sessions,
    two installs sharing ``VAR_DIR``) never share a lock. ``flock`` locks belong to an open file,
    not to the process: a second open of the file in the same process conflicts like another
    process would.
    """

    def __init__(self, alias: str, run_id: int):
        name = str(connections[alias].settings_dict["NAME"])
        database = hashlib.sha256(name.encode()).hexdigest()[:16]
        self.path = Path(settings.VAR_DIR) / "locks" / f"{database}-run{run_id}.lock"
        self.run_id = run_id
        self.fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, *, wait: bool) -> None:
        fd = self._open()
        try:
            if wait:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + TRY_SECONDS
                while not _try_flock(fd, fcntl.LOCK_EX):
                    if time.monotonic() >= deadline:
                        raise RunLocked(f"run #{self.run_id} is locked")
                    time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None

    def held_elsewhere(self) -> bool:
        # A shared lock for a moment: it conflicts with a holder's exclusive lock, not with other
        # checks; a prune starting meanwhile tries again for ``TRY_SECONDS``.
        fd = self._open()
        try:
            if _try_flock(fd, fcntl.LOCK_SH):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True
        finally:
            os.close(fd)


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
