"""The trash: where a prune puts checkpoint files instead of deleting them, for a while.

A run's trash lives inside the run itself, ``<run>/.trash/``, so that moving a file there is a
rename on the same file system (locally) or a server-side copy in the same bucket (object storage),
and never crosses a root. Each prune puts its files in a *batch*: ``.trash/<batch>/<name>``, with a
marker beside it, ``.trash/<batch>.json``, saying when the batch was made and which names it holds.
The marker is what lists the batches (one listing of ``.trash`` for both kinds of storage, a bucket
having no directories), what dates them, and what a restore trusts: a file that appeared in a
batch without having been put there is never moved into the run.

Discovery never sees the trash: it lists only the files directly in the run directory (a bucket
listing stops at the first ``/`` below the prefix too), and ``.trash`` is a directory.

Three promises, each with a test that tries to break it:

* A restore never overwrites: a checkpoint whose file of the same name is back in the run (a
  trainer saved that step again) stays in the trash, whole, and the result says why. Locally a
  file is restored by a hard link (which fails when the name exists) and then unlinked from the
  trash; in a bucket by a check and a server-side copy.
* Emptying touches nothing outside ``.trash``: it deletes only what a listing of a batch shows
  directly in it (a symbolic link is removed, never followed) and refuses a ``.trash`` that is
  itself a link or a file.
* Moving is idempotent: a re-run of a half-done move (a prune retried after a crash) counts what
  is already in the batch as done and never replaces a file already there.

Imports no Django; paths may be local directories or ``s3://`` URLs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from persistence import storage
from persistence.files import atomic_write_bytes, fsync_directory

TRASH_DIR = ".trash"
MARKER_SUFFIX = ".json"
# Batch names become a directory and a marker name: plain, short, never hidden, never a path.
_BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
# A marker is small (a list of names); anything larger is not ours.
_MARKER_LIMIT = 16 << 20
# A checkpoint's files share its prefix: ``P.index``, ``P.data-00000-of-00001``, ``P.meta``.
_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")

Progress = Callable[[int, int, str], None]  # (done, total, message)

__all__ = [
    "MARKER_SUFFIX", "TRASH_DIR", "Batch", "EmptyResult", "MoveResult", "RestoreResult", "TrashError",
    "batch_exists", "check_batch_name", "empty", "list_batches", "move_to_trash", "restore",
]


class TrashError(ValueError):
    """The trash cannot be used as asked (a bad batch name, a ``.trash`` that is not a directory)."""


@dataclass
class MoveResult:
    batch: str
    moved: list[str]  # base names moved into the batch by this call
    already_gone: list[str]  # not in the run (already in the batch, or gone before)
    failed: dict[str, str]  # base name -> why; a re-run retries them
    bytes: int  # bytes moved by this call

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreResult:
    batch: str
    restored: list[str]  # base names back in the run directory
    refused: dict[str, str]  # base name -> why it stayed in the trash (never overwritten)
    failed: dict[str, str]  # base name -> error
    bytes: int
    batch_removed: bool  # nothing was left, so the batch and its marker are gone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    name: str
    trashed_at: float  # seconds since the epoch
    files: dict[str, int]  # base name -> bytes, as the batch holds them now
    expected: list[str] = field(default_factory=list)  # names the marker says were put in

    @property
    def bytes(self) -> int:
        return sum(self.files.values())

    def age_seconds(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.trashed_at

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trashed_at": self.trashed_at, "files": len(self.files), "bytes": self.bytes}


@dataclass
class EmptyResult:
    emptied: list[str]  # batch names removed whole
    files: int
    bytes_freed: int
    failed: dict[str, str]  # path -> why (the batch stays; the next run tries again)
    kept: list[str]  # batches younger than asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_batch_name(batch: str) -> str:
    """``batch`` if it can name a batch (letters, digits, ``_`` and ``-``); ``TrashError`` otherwise."""
    if not isinstance(batch, str) or not _BATCH.fullmatch(batch):
        raise TrashError(f"{batch!r} cannot name a trash batch (letters, digits, '_' and '-' only)")
    return batch


def checkpoint_prefix(name: str) -> str:
    """The checkpoint a file belongs to: its name without ``.index``, ``.meta`` or ``.data-…``."""
    return _SUFFIX.sub("", name)


# --- the two kinds of storage ------------------------------------------------------------------


class _Local:
    """A run directory on this machine: renames, hard links, nothing followed."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        self.trash = os.path.join(self.directory, TRASH_DIR)

    def batch_dir(self, batch: str) -> str:
        return os.path.join(self.trash, batch)

    def _check_dir(self, path: str, *, create: bool) -> bool:
        """Whether ``path`` is a real directory (created when asked); raise when it is anything else."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not create:
                return False
            os.mkdir(path, 0o755)
            return True
        if not stat.S_ISDIR(mode):
            # A link here could send files out of the run (moving) or delete elsewhere (emptying).
            raise TrashError(f"{path} is not a directory (a symbolic link or a file); the trash is not used")
        return True

    def prepare(self, batch: str) -> None:
        self._check_dir(self.trash, create=True)
        self._check_dir(self.batch_dir(batch), create=True)

    def has_trash(self) -> bool:
        return self._check_dir(self.trash, create=False)

    def list_files(self, path: str) -> dict[str, int]:
        """Entries directly in ``path`` that are not directories (links included, never followed)."""
        found = {}
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        found[entry.name] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
        return found

    def batch_names(self) -> dict[str, float]:
        """Batch name -> mtime of its marker or directory, for everything in ``.trash``."""
        found: dict[str, float] = {}
        with os.scandir(self.trash) as entries:
            for entry in entries:
                name = entry.name[: -len(MARKER_SUFFIX)] if entry.name.endswith(MARKER_SUFFIX) else entry.name
                if _BATCH.fullmatch(name):
                    found[name] = max(found.get(name, 0.0), entry.stat(follow_symlinks=False).st_mtime)
        return found

    def batch_is_dir(self, batch: str) -> bool:
        return self._check_dir(self.batch_dir(batch), create=False)

    def read_marker(self, batch: str) -> dict | None:
        path = os.path.join(self.trash, batch + MARKER_SUFFIX)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_size > _MARKER_LIMIT:
                return None
            with open(path, "rb") as handle:
                return _parse_marker(handle.read())
        except FileNotFoundError:
            return None

    def write_marker(self, batch: str, data: bytes) -> None:
        atomic_write_bytes(os.path.join(self.trash, batch + MARKER_SUFFIX), data)

    def move_in(self, batch: str, names: Sequence[str], on_progress: Progress | None) -> MoveResult:
        result = MoveResult(batch, [], [], {}, 0)
        target = self.batch_dir(batch)
        step = max(1, len(names) // 100)
        for i, name in enumerate(names, 1):
            source, destination = os.path.join(self.directory, name), os.path.join(target, name)
            try:
                size = os.lstat(source).st_size
            except FileNotFoundError:
                result.already_gone.append(name)
            except OSError as exc:
                result.failed[name] = exc.strerror or str(exc)
            else:
                if os.path.lexists(destination):
                    # The batch already holds a file of that name: never replace what it keeps.
                    result.failed[name] = "a file of that name is already in the trash batch"
                else:
                    try:
                        os.rename(source, destination)
                    except FileNotFoundError:
                        result.already_gone.append(name)
                    except OSError as exc:
                        result.failed[name] = exc.strerror or str(exc)
                    else:
                        result.moved.append(name)
                        result.bytes += size
            if on_progress is not None and (i % step == 0 or i == len(names)):
                on_progress(i, len(names), f"moved {i} of {len(names)} files to the trash")
        if result.moved:
            fsync_directory(target)
            fsync_directory(self.directory)
        return result

    def exists_in_run(self, name: str) -> bool:
        return os.path.lexists(os.path.join(self.directory, name))

    def is_regular_in_batch(self, batch: str, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.batch_dir(batch), name)).st_mode)
        except FileNotFoundError:
            return False

    def restore_one(self, batch: str, name: str) -> None:
        """Put one file back; ``FileExistsError`` when the run has that name (nothing changed)."""
        source, destination = os.path.join(self.batch_dir(batch), name), os.path.join(self.directory, name)
        try:
            os.link(source, destination)  # fails, atomically, when the name exists
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A file system without hard links: check, then rename (a same-step save in between
            # is the one case this cannot rule out).
            if os.path.lexists(destination):
                raise FileExistsError(errno.EEXIST, "exists", destination) from None
            os.rename(source, destination)
            return
        os.unlink(source)

    def finish_restore(self, batch: str) -> None:
        fsync_directory(self.directory)

    def remove(self, batch: str, names: Iterable[str]) -> dict[str, str]:
        failed = {}
        target = self.batch_dir(batch)
        for name in names:
            try:
                os.unlink(os.path.join(target, name))  # a link is removed, its target is not touched
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed[os.path.join(target, name)] = exc.strerror or str(exc)
        return failed

    def remove_batch(self, batch: str) -> dict[str, str]:
        """Remove the (emptied) batch directory, then its marker."""
        try:
            os.rmdir(self.batch_dir(batch))
        except FileNotFoundError:
            pass
        except OSError as exc:
            return {self.batch_dir(batch): exc.strerror or str(exc)}
        try:
            os.unlink(os.path.join(self.trash, batch + MARKER_SUFFIX))
        except FileNotFoundError:
            pass
        except OSError as exc:
            return {batch + MARKER_SUFFIX: exc.strerror or str(exc)}
        fsync_directory(self.trash)
        return {}


class _Bucket:
    """A run under an ``s3://`` prefix: server-side copies and batch deletes."""

    def __init__(self, directory: str):
        self.directory = str(storage.parse_url(directory))
        self.trash = storage.join(self.directory, TRASH_DIR)
        self.store = storage.storage_for(self.directory)
        self._restored: list[str] = []  # copied back, their trash copies deleted by finish_restore

    def batch_dir(self, batch: str) -> str:
        return storage.join(self.trash, batch)

    def prepare(self, batch: str) -> None:
        pass  # prefixes need no creating

    def has_trash(self) -> bool:
        return True

    def list_files(self, path: str) -> dict[str, int]:
        return {entry.name: entry.size for entry in self.store.list(path)}

    def batch_names(self) -> dict[str, float]:
        # A bucket lists the markers (objects directly under .trash/); a batch without one is
        # found through the prefixes it has files under only when its marker exists, which
        # move_to_trash writes before the first copy.
        found: dict[str, float] = {}
        for entry in self.store.list(self.trash):
            if entry.name.endswith(MARKER_SUFFIX) and _BATCH.fullmatch(entry.name[: -len(MARKER_SUFFIX)]):
                found[entry.name[: -len(MARKER_SUFFIX)]] = entry.mtime_ns / 1e9
        return found

    def batch_is_dir(self, batch: str) -> bool:
        return True

    def read_marker(self, batch: str) -> dict | None:
        try:
            return _parse_marker(self.store.read_bytes(storage.join(self.trash, batch + MARKER_SUFFIX),
                                                       limit=_MARKER_LIMIT))
        except FileNotFoundError:
            return None
        except storage.StorageError as exc:
            if "larger than" in str(exc):
                return None
            raise

    def write_marker(self, batch: str, data: bytes) -> None:
        self.store.put_bytes(storage.join(self.trash, batch + MARKER_SUFFIX), data)

    def move_in(self, batch: str, names: Sequence[str], on_progress: Progress | None) -> MoveResult:
        result = MoveResult(batch, [], [], {}, 0)
        in_run = self.list_files(self.directory)
        in_batch = self.list_files(self.batch_dir(batch))
        copied: list[str] = []
        for i, name in enumerate(names, 1):
            if name not in in_run:
                result.already_gone.append(name)
            elif name in in_batch:
                result.failed[name] = "a file of that name is already in the trash batch"
            else:
                try:
                    self.store.copy(storage.join(self.directory, name), storage.join(self.batch_dir(batch), name))
                except FileNotFoundError:
                    result.already_gone.append(name)
                except OSError as exc:
                    result.failed[name] = str(exc)
                else:
                    copied.append(name)
            if on_progress is not None:
                on_progress(i, len(names), f"copied {i} of {len(names)} files to the trash")
        # Indexes go first, in a request of their own: a checkpoint is seen through its index, so
        # an interruption leaves orphan shards (which a re-run removes), never a half checkpoint.
        indexes = [n for n in copied if n.endswith(".index")]
        for group in (indexes, [n for n in copied if not n.endswith(".index")]):
            if not group:
                continue
            errors = self.store.delete_many([storage.join(self.directory, n) for n in group])
            for name in group:
                reason = errors.get(storage.join(self.directory, name))
                if reason:
                    result.failed[name] = f"copied to the trash but not deleted: {reason}"
                else:
                    result.moved.append(name)
                    result.bytes += in_run[name]
        return result

    def exists_in_run(self, name: str) -> bool:
        return self.store.head(storage.join(self.directory, name)) is not None

    def is_regular_in_batch(self, batch: str, name: str) -> bool:
        return True  # listed objects are what they are: a bucket has no links

    def restore_one(self, batch: str, name: str) -> None:
        destination = storage.join(self.directory, name)
        if self.store.head(destination) is not None:
            raise FileExistsError(errno.EEXIST, "exists", destination)
        self.store.copy(storage.join(self.batch_dir(batch), name), destination)
        self._restored.append(name)

    def finish_restore(self, batch: str) -> None:
        # The copies are in place: only now do the trash copies go.
        restored, self._restored = self._restored, []
        if restored:
            self.store.delete_many([storage.join(self.batch_dir(batch), n) for n in restored])

    def remove(self, batch: str, names: Iterable[str]) -> dict[str, str]:
        return self.store.delete_many([storage.join(self.batch_dir(batch), n) for n in names])

    def remove_batch(self, batch: str) -> dict[str, str]:
        return self.store.delete_many([storage.join(self.trash, batch + MARKER_SUFFIX)])


def _backend(directory: str) -> _Local | _Bucket:
    return _Bucket(directory) if storage.is_url(directory) else _Local(directory)


def _parse_marker(data: bytes) -> dict | None:
    try:
        marker = json.loads(data)
    except ValueError:
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


# --- operations --------------------------------------------------------------------------------


def move_to_trash(
    directory: str, names: Sequence[str], batch: str, *, now: float | None = None,
    on_progress: Progress | None = None,
) -> MoveResult:
    """Move the files ``names`` (base names in ``directory``) into trash batch ``batch``.

    The marker is written (or extended, for a re-run) before the first file moves, so a batch is
    never without one. Files move in the order given (callers put indexes first). A name not in the
    run counts as already gone; a name the batch already holds is never replaced (``failed``).
    """
    check_batch_name(batch)
    for name in names:
        storage.join(directory, name)  # raises for anything but a base name
        if name == TRASH_DIR:
            raise TrashError("the trash cannot be put in the trash")
    backend = _backend(directory)
    backend.prepare(batch)
    marker = backend.read_marker(batch) or {}
    known = [n for n in marker.get("files", []) if isinstance(n, str)]
    files = known + [n for n in names if n not in set(known)]
    trashed_at = marker.get("trashed_at") if isinstance(marker.get("trashed_at"), int | float) else None
    body = {"batch": batch, "trashed_at": trashed_at or (time.time() if now is None else now), "files": files}
    if body != marker:
        backend.write_marker(batch, json.dumps(body, sort_keys=True).encode())
    return backend.move_in(batch, list(names), on_progress)


def batch_exists(directory: str, batch: str) -> bool:
    """Whether ``directory`` still has a trash batch named ``batch`` (its marker)."""
    check_batch_name(batch)
    backend = _backend(directory)
    try:
        return backend.has_trash() and backend.read_marker(batch) is not None
    except (OSError, TrashError):
        return False


def list_batches(directory: str) -> list[Batch]:
    """The trash batches of a run, oldest first, with what each holds now."""
    backend = _backend(directory)
    if not backend.has_trash():
        return []
    batches = []
    for name, mtime in backend.batch_names().items():
        marker = backend.read_marker(name) or {}
        trashed_at = marker.get("trashed_at")
        if not isinstance(trashed_at, int | float) or isinstance(trashed_at, bool):
            trashed_at = mtime
        try:
            files = backend.list_files(backend.batch_dir(name)) if backend.batch_is_dir(name) else {}
        except TrashError:
            files = {}  # a link where a batch should be: nothing in it is ours to list or delete
        expected = [n for n in marker.get("files", []) if isinstance(n, str)]
        batches.append(Batch(name, float(trashed_at), files, expected))
    return sorted(batches, key=lambda b: (b.trashed_at, b.name))


def restore(directory: str, batch: str) -> RestoreResult:
    """Move batch ``batch`` back into ``directory``, one checkpoint at a time, never overwriting.

    A checkpoint any of whose files exists in the run again stays in the trash whole (``refused``),
    as does any file the marker does not name or that is not a regular file. Data and ``.meta``
    files go back before the ``.index``, so a scan in between never sees an index without its
    shards. When nothing is left, the batch and its marker are removed.
    """
    check_batch_name(batch)
    backend = _backend(directory)
    result = RestoreResult(batch, [], {}, {}, 0, False)
    marker = backend.read_marker(batch) if backend.has_trash() else None
    if marker is None:
        raise TrashError(f"there is no trash batch {batch} in this run (emptied, or already restored)")
    present = backend.list_files(backend.batch_dir(batch)) if backend.batch_is_dir(batch) else {}
    expected = {n for n in marker["files"] if isinstance(n, str)}
    groups: dict[str, list[str]] = {}
    for name in sorted(present):
        if name not in expected:
            result.refused[name] = "not put in the trash by this prune; left where it is"
        elif not backend.is_regular_in_batch(batch, name):
            result.refused[name] = "not a regular file; left in the trash"
        else:
            groups.setdefault(checkpoint_prefix(name), []).append(name)
    for prefix, group in sorted(groups.items()):
        clash = [n for n in group if backend.exists_in_run(n)]
        if clash:
            for name in group:
                result.refused[name] = (f"{clash[0]} exists in the run directory again; not overwritten, "
                                        f"{prefix} stays in the trash")
            continue
        for name in sorted(group, key=lambda n: (n.endswith(".index"), n)):
            try:
                backend.restore_one(batch, name)
            except FileExistsError:
                result.refused[name] = f"{name} appeared in the run directory meanwhile; not overwritten"
            except OSError as exc:
                result.failed[name] = getattr(exc, "strerror", None) or str(exc)
            else:
                result.restored.append(name)
                result.bytes += present[name]
    backend.finish_restore(batch)
    if not result.refused and not result.failed:
        left = backend.list_files(backend.batch_dir(batch)) if backend.batch_is_dir(batch) else {}
        if not left and not backend.remove_batch(batch):
            result.batch_removed = True
    return result


def empty(directory: str, *, older_than: float, now: float | None = None,
          batches: Iterable[str] | None = None) -> EmptyResult:
    """Delete the trash batches at least ``older_than`` seconds old (``batches``: only those names).

    Only what the listing of ``.trash/<batch>/`` shows directly in it is deleted, then the batch
    and its marker; nothing else in the run, and nothing a link in the trash points to.
    """
    now = time.time() if now is None else now
    wanted = None if batches is None else {check_batch_name(b) for b in batches}
    backend = _backend(directory)
    result = EmptyResult([], 0, 0, {}, [])
    for batch in list_batches(directory):
        if wanted is not None and batch.name not in wanted:
            continue
        if batch.age_seconds(now) < older_than:
            result.kept.append(batch.name)
            continue
        failed = backend.remove(batch.name, batch.files)
        failed = failed or backend.remove_batch(batch.name)
        if failed:
            result.failed.update(failed)
            continue
        result.emptied.append(batch.name)
        result.files += len(batch.files)
        result.bytes_freed += batch.bytes
    return result
