"""Carrying out a retention plan (``persistence.retention``) in a run directory or a bucket prefix.

The same steps in both places, in the same order: check the plan, rewrite the state files so
they no longer name what is about to go, then delete. What differs is how each step is done:

* a local directory's state file is replaced through a temporary file, and only if its content
  is still what the new one was computed from (``statefile.write_state_file(unchanged_from=)``);
  its files are unlinked one by one, the ``.index`` first;
* a bucket's state object is replaced with one conditional PUT (``If-Match`` on the ETag it was
  read with), which the store checks and writes in one step; its objects go in batch deletes
  (1,000 keys per request), all the ``.index`` objects of the plan before any data or ``.meta``.

A trainer does not take our locks: a save that lands while we rewrite makes us read its state
again and start over from it, so its new latest and entries stay; only the plan's deleted
prefixes ever leave a list. Every name the plan deletes goes through :func:`_discard`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persistence import storage, trash
from persistence.files import fsync_directory, resolve, resolve_inside
from persistence.retention import Plan, deletion_order
from persistence.statefile import (
    StateFile,
    StateFileChanged,
    StateFileError,
    StateFileUnavailable,
    parse_state_bytes,
    read_state_version,
    write_state_file,
)

__all__ = ["STATE_REWRITE_ATTEMPTS", "ExecutionResult", "execute_plan"]


@dataclass
class ExecutionResult:
    deleted: list[str]  # base names removed by this run
    already_gone: list[str]  # in the plan but not on disk (a half-done plan re-run)
    failed: dict[str, str]  # base name -> error message; re-running the plan retries them
    bytes_freed: int  # measured on disk (a bucket: the listing's sizes), by this run
    state_files: list[str]  # state files rewritten
    problems: list[str]  # state files that could not be read, latests that are not on disk
    trash_batch: str | None = None  # the files went to this trash batch instead of being deleted

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[int, int, str], None]  # (done, total, message)

# A trainer saving every few seconds cannot change the state file this many times within the
# milliseconds one rewrite takes; if it does, something else is rewriting it in a loop.
STATE_REWRITE_ATTEMPTS = 5


def execute_plan(
    directory: str,
    plan: Plan,
    *,
    state_files: Sequence[str] = ("checkpoint",),
    on_progress: ProgressCallback | None = None,
    trash_batch: str | None = None,
) -> ExecutionResult:
    """Delete the plan's files and make the state files name only checkpoints still there.

    With ``trash_batch`` the files are moved into that batch of the run's trash
    (``persistence.trash``) instead of being deleted; everything else is the same, and
    ``bytes_freed`` is then what was moved (freed once the trash is emptied).

    ``directory`` is a local run directory or a run's ``s3://`` URL. Everything is checked before
    anything is deleted. A name that is not a base name, a plan whose ``files_to_delete``
    disagrees with its decisions (edited JSON), a plan that deletes a state file, or a state file
    whose latest checkpoint the plan deletes (the run changed since planning) raises
    ``ValueError``; a local file that resolves outside ``directory`` raises
    ``persistence.files.PathOutsideRoots``. A file already gone counts as done, so re-running a
    half-done plan finishes it. Nothing outside ``plan.files_to_delete`` is ever deleted. Each
    state file keeps the surviving checkpoints it listed (with their timestamps) and its latest,
    and gets the plan's ``last_preserved_timestamp`` so that a later ``CheckpointManager`` carries
    on with the hours rule where the plan left off.

    The state files are rewritten *before* the deletions (TensorFlow's own manager records its
    state before sweeping too): from then on they never name a checkpoint that is being deleted,
    so ``tf.train.latest_checkpoint`` never sees a half-deleted one, even if we are killed midway.
    """
    _check_plan(directory, plan, state_files)
    if trash_batch is not None:
        trash.check_batch_name(trash_batch)
    deleted_prefixes = plan.deleted_prefixes
    states = []
    read: dict[str, bytes] = {}
    problems: list[str] = []
    for state_name in state_files:
        try:
            version = read_state_version(directory, state_name)
            if version is None:
                continue
            state = parse_state_bytes(version[0], state_name, directory)
            read[state.name] = version[0]
        except StateFileUnavailable as exc:
            # A state object we could not fetch may name what the plan deletes.
            raise ValueError(f"{exc}; nothing was deleted, try again") from None
        except StateFileError as exc:
            problems.append(str(exc))  # TensorFlow cannot read it either; not ours to invent
            continue
        if state.latest is None:
            problems.append(f"{state_name}: {state.problem}; left as it is")
            continue
        if state.latest in deleted_prefixes:
            raise ValueError(f"{state_name} names {state.latest} as the latest checkpoint but the plan "
                             "deletes it; the run changed since the plan was made, plan again")
        states.append(state)

    rewritten = []
    for state in states:
        if _rewrite_state_file(directory, state.name, plan, deleted_prefixes, problems, on_progress,
                               checked=(read[state.name], state)):
            rewritten.append(state.name)

    outcome = _discard(directory, deletion_order(plan.files_to_delete), on_progress=on_progress,
                       trash_batch=trash_batch)
    return ExecutionResult(deleted=outcome.deleted, already_gone=outcome.gone, failed=outcome.failed,
                           bytes_freed=outcome.freed, state_files=rewritten, problems=problems,
                           trash_batch=trash_batch)


def _check_plan(directory: str, plan: Plan, state_files: Sequence[str]) -> None:
    # A plan may come back from JSON: its parts must still agree with each other.
    decided = sorted(name for d in plan.decisions if not d.keep for name in d.delete_files)
    if decided != sorted(plan.files_to_delete) or any(d.keep and d.delete_files for d in plan.decisions):
        raise ValueError("plan is inconsistent: files_to_delete does not match its decisions")
    in_bucket = storage.is_url(directory)
    if in_bucket:
        storage.parse_url(directory)  # a URL that does not parse names no run
    real_directory = None if in_bucket else resolve(directory)
    links = None if real_directory is None else _symlinks(real_directory, plan.files_to_delete)
    for name in plan.files_to_delete:
        # In a bucket a backslash is just a character of the key, but tools that turn keys into
        # paths read it as a separator.
        if (not name or os.path.basename(name) != name or name in (".", "..")
                or (in_bucket and "\\" in name)):
            raise ValueError(f"plan names {name!r}, which is not a file name inside the run directory")
        if name in state_files:
            raise ValueError(f"plan deletes the state file {name}")
        if links is None:
            continue
        # A plain name inside the resolved directory can only lead elsewhere through a symlink: only
        # those are resolved (a full resolve per file was most of a large prune's time). A symlink
        # out of the run is refused; the entry itself is what gets unlinked, never its target.
        if name in links:
            resolve_inside(os.path.join(real_directory, name), [real_directory])


# From this many names to check on, one listing of the directory is cheaper than a call per name.
LIST_DIRECTORY_FROM = 256


def _symlinks(real_directory: Path, names: list[str]) -> set[str]:
    """The names among ``names`` that are symbolic links in ``real_directory``.

    A large plan lists the directory once: the entries' types come with the listing (no call per
    file, and no inode read from a cold disk). A small one asks about each of its names.
    """
    if len(names) >= LIST_DIRECTORY_FROM:
        try:
            with os.scandir(real_directory) as entries:
                return {entry.name for entry in entries if entry.is_symlink()}
        except OSError:
            pass  # not listable now: ask about each name, as a small plan does
    return {name for name in names if os.path.islink(os.path.join(real_directory, name))}


def _rewrite_state_file(directory: str, name: str, plan: Plan, deleted_prefixes: set[str], problems: list[str],
                        on_progress: ProgressCallback | None, *, checked: tuple[bytes, StateFile] | None = None) -> bool:
    """Rewrite state file ``name`` without the plan's deleted checkpoints; False if left as it is.

    The file is read again here and replaced only if it is still exactly what was read (locally
    its content, in a bucket its ETag): a save that lands meanwhile (a trainer rewrites the file
    after every save) makes us start over from its content, so its new latest and entries stay.
    ``checked``: the content the plan was checked against and its parse, reused when unchanged.
    """
    for _ in range(STATE_REWRITE_ATTEMPTS):
        try:
            version = read_state_version(directory, name)
            if version is None:
                return False  # removed since the check: nothing names a deleted checkpoint any more
            data, etag = version
            # Usually what was just checked: a large run's state file is not parsed twice.
            state = checked[1] if checked is not None and data == checked[0] else parse_state_bytes(data, name, directory)
        except StateFileUnavailable as exc:
            raise ValueError(f"{exc}; nothing was deleted, try again") from None
        except StateFileError as exc:
            problems.append(str(exc))  # replaced by garbage meanwhile: not ours to invent
            return False
        if state.latest is None:
            problems.append(f"{name}: {state.problem}; left as it is")
            return False
        if state.latest in deleted_prefixes:
            raise ValueError(f"{name} names {state.latest} as the latest checkpoint but the plan deletes it; "
                             "the run changed since the plan was made, plan again")
        # Listed after the state was read: a checkpoint a trainer names there is already complete.
        present = _presence(directory, len(state.all_prefixes))
        survivors = [p for p in state.all_prefixes if p not in deleted_prefixes and present(p)]
        if on_progress is not None:
            on_progress(0, len(plan.files_to_delete), f"rewriting {name}")
        try:
            _write_survivors(directory, state, survivors, plan, problems, present,
                             unchanged_from=data, if_match=etag)
        except StateFileChanged:
            continue
        return True
    raise ValueError(f"{name} kept changing while the prune rewrote it ({STATE_REWRITE_ATTEMPTS} attempts); "
                     "nothing was deleted, try again")


def _write_survivors(directory: str, state: StateFile, survivors: list[str], plan: Plan, problems: list[str],
                     present: Callable[[str | None], bool], *, unchanged_from: bytes, if_match: str | None) -> None:
    timestamps = None
    if state.timestamps and all(p in state.timestamps for p in [*survivors, state.latest]):
        timestamps = {p: state.timestamps[p] for p in [*survivors, state.latest]}
    if not present(state.latest):
        problems.append(f"{state.name} names {state.latest} as latest, which is not on disk")
    anchor = plan.last_preserved_timestamp or state.last_preserved_timestamp
    write_state_file(directory, state.name, latest=state.latest, all_prefixes=survivors,
                     timestamps=timestamps, last_preserved_timestamp=anchor, unchanged_from=unchanged_from,
                     if_match=if_match)


def _presence(directory: str, asked: int = 1) -> Callable[[str | None], bool]:
    """Whether a checkpoint prefix is there: V2 through its ``.index``, V1 as a single file.

    ``asked``: about how many prefixes will be asked about; from ``LIST_DIRECTORY_FROM`` on, a
    local directory is listed once instead of a stat per prefix.
    """
    if storage.is_url(directory):
        names = {entry.name for entry in storage.storage_for(directory).list(directory)}
        return lambda prefix: bool(prefix) and (f"{prefix}.index" in names or prefix in names)
    if asked >= LIST_DIRECTORY_FROM:
        try:
            indexes, files = _listed(directory)
        except OSError:
            pass  # asked one at a time below
        else:
            return lambda prefix: bool(prefix) and (f"{prefix}.index" in indexes or prefix in files)

    def on_disk(prefix: str | None) -> bool:
        if not prefix:
            return False
        return (os.path.exists(os.path.join(directory, prefix + ".index"))
                or os.path.isfile(os.path.join(directory, prefix)))

    return on_disk


def _listed(directory: str) -> tuple[set[str], set[str]]:
    """The names of ``directory`` that ``os.path.exists`` and ``os.path.isfile`` hold true for,
    the first among the ``.index`` names only; the types come with the listing, only links are
    followed (a stat each)."""
    indexes, files = set(), set()
    with os.scandir(directory) as entries:
        for entry in entries:
            link = entry.is_symlink()
            if entry.name.endswith(".index") and (not link or os.path.exists(entry.path)):
                indexes.add(entry.name)
            if entry.is_file():
                files.add(entry.name)
    return indexes, files


@dataclass
class Discarded:
    deleted: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # not there any more: counts as done
    failed: dict[str, str] = field(default_factory=dict)
    freed: int = 0


def _discard(directory: str, names: list[str], *, on_progress: ProgressCallback | None = None,
             trash_batch: str | None = None) -> Discarded:
    """Remove ``names`` (base names, checked by the caller, in deletion order) from the run.

    The one place a prune removes anything: into the trash batch ``trash_batch`` when given (both
    kinds of run), else local files are unlinked (the entry, never a link's target) and bucket
    objects batch-deleted.
    """
    if trash_batch is not None:
        moved = trash.move_to_trash(directory, names, trash_batch, on_progress=on_progress)
        return Discarded(deleted=moved.moved, gone=moved.already_gone, failed=moved.failed, freed=moved.bytes)
    if storage.is_url(directory):
        return _discard_objects(directory, names, on_progress)
    done = Discarded()
    step = max(1, len(names) // 100)
    # Names relative to the directory opened once: no walk of its whole path per call.
    dir_fd: int | None = None
    if {os.stat, os.unlink} <= os.supports_dir_fd:
        try:
            dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            pass  # each name then meets the same error through its full path
    try:
        for i, name in enumerate(names, 1):
            _discard_file(directory, name, dir_fd, done)
            if on_progress is not None and (i % step == 0 or i == len(names)):
                on_progress(i, len(names), f"deleted {i} of {len(names)} files")
        if done.deleted:
            if dir_fd is None:
                fsync_directory(directory)
            else:
                os.fsync(dir_fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return done


def _discard_file(directory: str, name: str, dir_fd: int | None, done: Discarded) -> None:
    path = name if dir_fd is not None else os.path.join(directory, name)
    try:
        size = os.lstat(path, dir_fd=dir_fd).st_size
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        done.gone.append(name)
    except OSError as exc:
        done.failed[name] = exc.strerror or str(exc)
    else:
        done.deleted.append(name)
        done.freed += size


# Keys per batch delete request (S3's maximum).
DELETE_BATCH = 1000


def _discard_objects(directory: str, names: list[str], on_progress: ProgressCallback | None) -> Discarded:
    bucket = storage.storage_for(directory)
    done = Discarded()
    # One listing gives what is still there and each object's size (a batch delete reports a key
    # that was already gone as deleted, so it cannot tell them apart).
    sizes = {entry.name: entry.size for entry in bucket.list(directory)}
    remaining = [name for name in names if name in sizes]
    done.gone = [name for name in names if name not in sizes]
    # Phases in deletion order: every .index of the plan goes before any data or .meta object,
    # because a batch deletes its keys in no particular order and a checkpoint seen without its
    # index is simply not there, while one seen without its data looks restorable and is not.
    phases: list[list[str]] = []
    for name in remaining:
        phase = 0 if name.endswith(".index") else 2 if name.endswith(".meta") else 1
        while len(phases) <= phase:
            phases.append([])
        phases[phase].append(name)
    finished = len(done.gone)
    for phase in phases:
        for start in range(0, len(phase), DELETE_BATCH):
            batch = phase[start:start + DELETE_BATCH]
            urls = {storage.join(directory, name): name for name in batch}
            failed = bucket.delete_many(list(urls))
            for url, name in urls.items():
                if url in failed:
                    done.failed[name] = failed[url]
                else:
                    done.deleted.append(name)
                    done.freed += sizes[name]
            finished += len(batch)
            if on_progress is not None:
                on_progress(finished, len(names), f"deleted {finished} of {len(names)} files")
    if on_progress is not None and names and not remaining:
        on_progress(len(names), len(names), f"deleted {len(names)} of {len(names)} files")
    return done
