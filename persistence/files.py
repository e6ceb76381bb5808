"""File-system primitives shared by discovery, retention, freezing and downloads.

Two rules live here so that no caller re-implements them:

* A file that someone else may read (a state file, a frozen ``.pb``) only ever appears at its final
  path complete: it is written to a temporary file in the same directory, flushed to disk, and
  moved into place with ``os.replace`` (atomic on POSIX within one file system).
* Every path that comes from a user, a database row or a state file is resolved (symlinks
  included) before use and must stay inside one of the allowed roots.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Temporary files carry this marker so that a crashed writer's leftovers can be recognised and
# removed later without ever touching a real checkpoint or export file.
TEMP_MARKER = ".partial-"
# After the marker comes the writer ("job42", "pid1234@host") and this separator, then mkstemp's
# random part: whoever finds the file can tell whether its writer is still at work.
_OWNER_END = "~"
_OWNER = re.compile(r"[A-Za-z0-9_.@-]+")
# A temporary file without a recognisable writer (written before writers were named) is only
# taken for a crashed writer's leftover once it is this old.
UNOWNED_TEMP_MAX_AGE = 24 * 3600.0


class PathOutsideRoots(ValueError):
    """A path resolves (after following symlinks) to a place outside every allowed root."""


def resolve(path: str | os.PathLike[str]) -> Path:
    """The canonical absolute path: ``~`` expanded, symlinks and ``..`` resolved."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` resolves to ``root`` itself or to something below it."""
    real, real_root = resolve(path), resolve(root)
    return real == real_root or real_root in real.parents


def resolve_inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """Resolve ``path`` and return it if it lies inside one of ``roots``; raise otherwise.

    NUL bytes are refused up front: the OS would reject them later with a less helpful error.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise PathOutsideRoots("path contains a NUL byte")
    roots = list(roots)
    real = resolve(text)
    for root in roots:
        if is_inside(real, root):
            return real
    allowed = ", ".join(str(resolve(r)) for r in roots) or "(none configured)"
    raise PathOutsideRoots(f"{text} is outside the allowed roots: {allowed}")


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_owner(pid: int | None = None) -> str:
    """The writer name of a process: ``pid<N>@<host>`` (this process by default)."""
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()) or "localhost"
    return f"pid{os.getpid() if pid is None else pid}@{host}"


def temp_file_owner(name: str) -> str | None:
    """The writer named in a temporary file's name, or None (not ours, or written unnamed)."""
    _, marker, rest = name.partition(TEMP_MARKER)
    owner, end, _ = rest.partition(_OWNER_END)
    if not marker or not end or not _OWNER.fullmatch(owner):
        return None
    return owner


def process_owner_ended(owner: str) -> bool | None:
    """For a ``pid<N>@<host>`` writer: True when that process is gone, False while it runs, and
    None when this machine cannot tell (another host, or not a process name)."""
    match = re.fullmatch(r"pid(\d+)@(.+)", owner)
    if match is None or match[2] != process_owner().partition("@")[2]:
        return None
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    return False


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _take_over_mode(fd: int, target: Path) -> None:
    # mkstemp creates 0600 files. A rewritten file keeps the mode (and, where this process may
    # change it, the owner and group) of the file it replaces, so a trainer, a model server or a
    # web server running as someone else reads it as before; a new file gets what open() would
    # have given it under the umask.
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        os.fchmod(fd, 0o666 & ~current_umask())
        return
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (existing.st_uid, existing.st_gid):
        uid = existing.st_uid if os.geteuid() == 0 else -1
        try:
            os.fchown(fd, uid, existing.st_gid)
        except OSError:
            pass  # not allowed to give it away: the mode is kept all the same
        else:
            # chown clears set-user/group-ID bits: put the mode back.
            os.fchmod(fd, stat.S_IMODE(existing.st_mode))


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, owner: str | None = None, sync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success move it into place atomically.

    The file at ``path`` keeps its mode (and owner where allowed); a new one gets ``0666`` less
    the umask. ``owner`` names the writer in the temporary file's name (default: this process,
    see :func:`process_owner`) so that :func:`remove_stale_temp_files` never removes a live
    writer's file. On any exception (or if the process dies) nothing appears at ``path``; the
    temporary file is removed when Python gets the chance, and :func:`remove_stale_temp_files`
    cleans up after a ``kill -9``. ``sync=False`` skips the ``fsync`` calls, for files that can
    be made again from what is durable (after a power loss such a file may be empty).
    """
    target = Path(path)
    owner = owner or process_owner()
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"unusable temporary file owner {owner!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}{owner}{_OWNER_END}", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _take_over_mode(handle.fileno(), target)
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sync_tree(directory: str | os.PathLike[str]) -> None:
    """fsync every file under ``directory`` and every directory in it (itself included)."""
    for root, _dirs, names in os.walk(directory):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(root)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, owner: str | None = None,
                     synced: bool = False) -> Iterator[str]:
    """A temporary directory path beside ``path`` (not yet created); on success it becomes ``path``.

    For exports that are directories (a SavedModel): the writer creates and fills the yielded
    path, and only a complete directory ever appears under the final name. A directory already
    at ``path`` is moved aside under a temporary name first and removed after the rename, so a
    reader sees the old or the new one, never a mix (there is an instant with neither). Named
    like :func:`atomic_writer`'s files, so :func:`remove_stale_temp_files` cleans up after a
    ``kill -9``. ``synced``: the writer has run :func:`sync_tree` on it after its last write
    (to overlap the disk's work with its own), so it is not synced again before the rename.
    """
    target = Path(path)
    owner = owner or process_owner()
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"unusable temporary file owner {owner!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = f".{target.name}{TEMP_MARKER}{owner}{_OWNER_END}"
    tmp = target.parent / (scratch + os.urandom(6).hex())
    try:
        yield str(tmp)
        if not tmp.is_dir():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        if not synced:
            sync_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / (scratch + "old-" + os.urandom(6).hex())
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_back(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the open file ``fd`` (just written: from the page cache)."""
    parts, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            raise OSError(f"the written file is shorter than expected ({offset} of {size} bytes)")
        parts.append(chunk)
        offset += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


@contextmanager
def scratch_directory(beside: str | os.PathLike[str], *, owner: str | None = None) -> Iterator[str]:
    """A new empty directory next to ``beside``, removed afterwards whatever happens.

    Named like :func:`atomic_writer`'s temporary files, so that :func:`remove_stale_temp_files`
    removes it if the process is killed before it can.
    """
    target = Path(beside)
    owner = owner or process_owner()
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"unusable temporary file owner {owner!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARKER}{owner}{_OWNER_END}", dir=target.parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temp_files(
    directory: str | os.PathLike[str],
    *,
    owner_ended: Callable[[str], bool | None] | None = None,
    now: float | None = None,
) -> list[str]:
    """Delete temporary files (and directories) left in ``directory`` by writers that ended; return their names.

    A file is removed only when its writer is known to have ended: ``owner_ended(owner)`` says
    so (e.g. the job that wrote it has finished or failed), or it names a process of this machine
    that is gone. A writer that may still run (another host, a live process, a job still running)
    keeps its file: two writers into one directory must not destroy each other's work. Files
    without a writer's name count as ended once older than ``UNOWNED_TEMP_MAX_AGE``.
    """
    removed = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        if entry.name.startswith(".") and TEMP_MARKER in entry.name and (is_dir or entry.is_file(follow_symlinks=False)):
            owner = temp_file_owner(entry.name)
            if owner is None:
                try:
                    ended = now - entry.stat(follow_symlinks=False).st_mtime > UNOWNED_TEMP_MAX_AGE
                except FileNotFoundError:
                    continue
            else:
                ended = owner_ended(owner) if owner_ended is not None else None
                if ended is None:
                    ended = process_owner_ended(owner)
            if not ended:
                continue
            try:
                if is_dir:
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed


class UnsafeFile(ValueError):
    """A file that must not be opened: not a regular file, or a link leading outside the roots.

    The message names the file and what is wrong with it, never anything read from it.
    """


def open_regular_file(path: str | os.PathLike[str]) -> int:
    """Open ``path`` read-only and return the descriptor, only if it is a regular file.

    The last component is never followed (``O_NOFOLLOW``): a link swapped in after the path was
    checked is refused rather than read. ``O_NONBLOCK`` keeps a FIFO from blocking the caller
    until some writer appears; it is refused right after. Raises ``UnsafeFile`` for a link or
    anything but a regular file, ``FileNotFoundError`` when there is nothing there.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{os.path.basename(os.fspath(path))} is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(f"{os.path.basename(os.fspath(path))} is not a regular file")
        # Reads of a regular file never block anyway; clear the flag so callers get ordinary I/O.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular_inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse ``path`` unless it resolves inside ``roots`` to a regular file.

    For files handed to a library that opens them itself (TensorFlow): checked right before the
    call, so that a symbolic link created after a run was registered cannot lead it outside the
    roots. Raises ``UnsafeFile``; ``FileNotFoundError`` when the file does not exist.
    """
    name = os.path.basename(os.fspath(path))
    try:
        real = resolve_inside(path, roots)
    except PathOutsideRoots:
        raise UnsafeFile(f"{name} leads outside the allowed roots (a symbolic link?)") from None
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(f"{name} is not a regular file")


def checkpoint_file_names(directory: str | os.PathLike[str], prefix: str) -> list[str]:
    """The names in ``directory`` that belong to checkpoint ``prefix``: index, data shards, meta."""
    names = []
    wanted = (f"{prefix}.index", f"{prefix}.meta")
    shard_start = f"{prefix}.data-"
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name in wanted or (entry.name.startswith(shard_start) and "-of-" in entry.name):
                    names.append(entry.name)
    except FileNotFoundError:
        return []
    return sorted(names)


def check_checkpoint_files(
    directory: str | os.PathLike[str], prefix: str, roots: Iterable[str | os.PathLike[str]],
    *, extra: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Check every file of checkpoint ``prefix`` (and ``extra`` paths, e.g. a meta graph kept by
    another checkpoint) with :func:`check_regular_inside` before TensorFlow opens them."""
    roots = list(roots)
    for name in checkpoint_file_names(directory, prefix):
        check_regular_inside(os.path.join(directory, name), roots)
    for path in extra:
        if os.path.lexists(path):
            check_regular_inside(path, roots)
