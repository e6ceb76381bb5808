"""Where runs may live: the directories below ``CHECKPOINT_ROOTS``, and the prefixes below its
``s3://`` and ``gs://`` entries (``CHECKPOINT_OBJECT_ROOTS``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from persistence import files, storage
from persistence.trash import TRASH_DIR


class NotOnObjectStorage(ValueError):
    """An operation that needs a run's files on a local disk was asked of a run in a bucket."""

    def __init__(self, action: str = "This operation"):
        super().__init__(f"{action} is not yet supported for runs on object storage.")


def on_object_storage(directory: str) -> bool:
    """Whether a run directory is a bucket URL rather than a local directory."""
    return storage.is_url(directory)


def checkpoint_directory(path: str, *, objects: bool = False, action: str = "This operation") -> Path:
    """Resolve a run directory and check it is an existing directory inside ``CHECKPOINT_ROOTS``.

    Raises ``ValueError`` with a message fit to show next to the form field. A bucket URL is
    accepted only with ``objects`` (tracking and scanning read it through ``persistence.storage``);
    everything else that calls this works on local files and is refused with
    :class:`NotOnObjectStorage` naming ``action``.
    """
    text = (path or "").strip()
    if not text:
        raise ValueError("Enter a directory.")
    if storage.is_url(text):
        if not objects:
            raise NotOnObjectStorage(action)
        return object_directory(text)  # type: ignore[return-value]
    if not os.path.isabs(os.path.expanduser(text)):
        raise ValueError("Enter an absolute path.")
    try:
        real = files.resolve_inside(text, settings.CHECKPOINT_ROOTS)
    except files.PathOutsideRoots:
        roots = ", ".join(str(r) for r in settings.CHECKPOINT_ROOTS)
        raise ValueError(f"This directory is outside the checkpoint roots ({roots}).") from None
    if not real.is_dir():
        raise ValueError("This directory does not exist." if not real.exists() else "This is not a directory.")
    return real


def object_directory(url: str, *, must_exist: bool = True) -> str:
    """The canonical form of a run URL inside ``CHECKPOINT_OBJECT_ROOTS``; raise ``ValueError`` otherwise.

    Like a local path, a key outside every root prefix (``..``, percent-encoded separators,
    another bucket) is refused. With ``must_exist`` the prefix is listed once (one request) and must
    hold at least one object, as a local run directory must exist.
    """
    roots = list(getattr(settings, "CHECKPOINT_OBJECT_ROOTS", []))
    try:
        location = storage.parse_url(url)
    except storage.OutsideRoots as exc:
        raise ValueError(str(exc)) from None
    try:
        canonical = storage.resolve_inside(str(location), roots)
    except storage.OutsideRoots:
        shown = ", ".join(roots) or "none is in object storage"
        raise ValueError(f"This location is outside the checkpoint roots ({shown}).") from None
    if must_exist:
        try:
            entries = storage.storage_for(canonical).list(canonical)
        except storage.StorageError as exc:
            raise ValueError(f"Cannot list this location: {exc}") from None
        if not entries:
            raise ValueError("Nothing is stored under this prefix.")
    return canonical


def run_location(directory: str) -> Path | str:
    """Check, at the moment of use, that a tracked run's directory is still inside the roots.

    For a bucket this is the path rule alone (no request): a scan then lists the prefix once.
    """
    if storage.is_url(directory):
        return object_directory(directory, must_exist=False)
    return checkpoint_directory(directory)


# The walk behind "directories that hold checkpoints but are not tracked": it runs on every view
# of the form, so it is bounded in depth and in directories visited, and it never follows a
# symbolic link (a link could lead outside the roots, or round in a circle).
CANDIDATE_MAX_DEPTH = 4
CANDIDATE_MAX_DIRECTORIES = 2000
CANDIDATES_SHOWN = 25
# Under bucket roots every prefix looked at is a LIST request (billed, and a round trip on each view
# of the form): at most this many in all, one page of 1,000 keys each.
CANDIDATE_MAX_LISTS = 20


@dataclass(frozen=True)
class Candidate:
    """A directory under a root with checkpoint index files in it, not tracked by any run."""

    path: str
    checkpoints: int
    suggested_name: str
    more: bool = False  # a prefix with more keys than one listing page: at least ``checkpoints``


def untracked_checkpoint_directories(
    tracked: Iterable[str], *, max_depth: int = CANDIDATE_MAX_DEPTH,
    max_directories: int = CANDIDATE_MAX_DIRECTORIES, limit: int = CANDIDATES_SHOWN,
    max_lists: int | None = None,
) -> tuple[list[Candidate], bool]:
    """Directories under ``CHECKPOINT_ROOTS`` holding ``*.index`` files that no run tracks, then
    prefixes under the bucket roots that hold them (at most ``max_lists`` LIST requests).

    Returns them (at most ``limit``, local directories first, each kind in path order) and whether
    the walk stopped at one of its bounds, so that the page can say more may not be shown.
    """
    tracked = list(tracked)
    found, truncated = _local_candidates(tracked, max_depth, max_directories, limit)
    if len(found) < limit and getattr(settings, "CHECKPOINT_OBJECT_ROOTS", None):
        budget = CANDIDATE_MAX_LISTS if max_lists is None else max_lists
        in_buckets, cut = _bucket_candidates(tracked, max_depth, budget, limit - len(found))
        found, truncated = found + in_buckets, truncated or cut
    elif getattr(settings, "CHECKPOINT_OBJECT_ROOTS", None):
        truncated = True
    return found, truncated


def _bucket_candidates(tracked: list[str], max_depth: int, max_lists: int, limit: int) -> tuple[list[Candidate], bool]:
    """Prefixes under the bucket roots with ``.index`` objects directly in them, breadth first."""
    from django.utils.text import slugify

    skip = {t.rstrip("/") for t in tracked if storage.is_url(t)}
    pending = [(root, 0) for root in settings.CHECKPOINT_OBJECT_ROOTS]
    found: list[Candidate] = []
    lists, truncated = 0, False
    while pending:
        if lists >= max_lists:
            truncated = True
            break
        url, depth = pending.pop(0)
        lists += 1
        try:
            entries, folders, more = storage.storage_for(url).list_with_prefixes(url, max_pages=1)
        except (storage.StorageError, OSError):
            continue  # an unreachable bucket has nothing to offer here; tracking it says why
        indexes = sum(1 for e in entries if e.name.endswith(".index"))
        if indexes and url not in skip:
            name = slugify(url.rstrip("/").rsplit("/", 1)[-1])[:100] or "run"
            found.append(Candidate(url, indexes, name, more))
            if len(found) >= limit:
                truncated = bool(pending or folders)
                break
        if depth < max_depth:
            pending.extend((f"{url.rstrip('/')}/{name}", depth + 1) for name in sorted(folders))
        elif folders:
            truncated = True
    return sorted(found, key=lambda c: c.path), truncated


def _local_candidates(
    tracked: list[str], max_depth: int, max_directories: int, limit: int
) -> tuple[list[Candidate], bool]:
    from django.utils.text import slugify

    skip = {os.path.realpath(t) for t in tracked}
    found: list[Candidate] = []
    visited, truncated = 0, False
    pending = [(Path(root), 0) for root in settings.CHECKPOINT_ROOTS]
    while pending:
        directory, depth = pending.pop(0)
        visited += 1
        if visited > max_directories:
            truncated = True
            break
        indexes, children = 0, []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name != TRASH_DIR:  # a run's pruned files, not a run of their own
                            children.append(entry.path)
                    elif entry.name.endswith(".index") and entry.is_file(follow_symlinks=False):
                        indexes += 1
        except OSError:
            continue  # unreadable or gone meanwhile: nothing to offer there
        if indexes and str(directory) not in skip:
            name = slugify(directory.name)[:100] or "run"
            found.append(Candidate(str(directory), indexes, name))
            if len(found) >= limit:
                truncated = bool(pending or children)
                break
        if depth < max_depth:
            pending.extend((Path(child), depth + 1) for child in sorted(children))
        elif children:
            truncated = True
    return sorted(found, key=lambda c: c.path), truncated
