"""A checkpoint's files where TensorFlow can open them: in place for a local run, staged from the
bucket into the local cache (``persistence.staging``, ``STAGING_CACHE_DIR``) for a run in one.

Verify, export, compare, partial restore and a save continuing a checkpoint read through
:func:`readable`, so that both kinds of run take the same path from here on. Only reading is
offered: a save into a bucket run writes locally and uploads (``bucket_saving``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings

from persistence import staging, storage

from .models import Checkpoint
from .roots import checkpoint_directory, object_directory, on_object_storage


@dataclass(frozen=True)
class Readable:
    """Local paths of a checkpoint's prefix and of the ``.meta`` it restores with (None: none)."""

    path: str
    meta: str | None
    staged_directory: str | None = None  # the staging view, for a run in a bucket
    run_directory: str = ""

    def shown(self, text: str) -> str:
        """``text`` (a TensorFlow message) naming the run's own location instead of the staging view."""
        if not self.staged_directory or not text:
            return text
        return text.replace(self.staged_directory, self.run_directory)


def cache() -> staging.StagingCache:
    return staging.StagingCache(settings.STAGING_CACHE_DIR, settings.STAGING_CACHE_BYTES)


def _meta_name(checkpoint: Checkpoint) -> str | None:
    """The base name of the ``.meta`` file ``checkpoint`` restores with, when it is in the same run."""
    meta = checkpoint.meta_path()
    if meta is None:
        return None
    directory, _, name = meta.rpartition("/")
    if directory.rstrip("/") != checkpoint.run.directory.rstrip("/"):
        raise ValueError(f"the meta graph of {checkpoint.prefix} is in another run, which cannot be staged with it")
    return name


@contextlib.contextmanager
def readable(checkpoint: Checkpoint, *, action: str, listing: list[storage.Entry] | None = None,
             with_meta: bool = True) -> Iterator[Readable]:
    """The checkpoint's files, checked at the moment of use, for the duration of the block.

    A local run: its directory must still be inside the roots and every file a regular file
    there. A run in a bucket: its URL must still be inside the roots; its ``.index``, shards and
    meta graph are staged (fetched, or taken from the cache when the ETag is unchanged) and stay
    in the cache until the block ends. ``with_meta=False`` leaves the meta graph out, for work that
    builds its graph from a recipe (``meta`` is then None). Raises ``ValueError`` with a message for users.
    """
    run = checkpoint.run
    if not on_object_storage(run.directory):
        checkpoint_directory(run.directory, action=action)
        checkpoint.check_files_at_use()
        yield Readable(checkpoint.path, checkpoint.meta_path() if with_meta else None)
        return
    object_directory(run.directory, must_exist=False)
    meta = _meta_name(checkpoint) if with_meta else None
    try:
        with cache().stage(run.directory, checkpoint.prefix, meta=meta, listing=listing) as staged:
            yield Readable(staged.path, staged.meta, staged.directory, run.directory.rstrip("/"))
    except staging.StagingError as exc:
        raise ValueError(f"cannot stage {checkpoint.prefix} from the bucket: {exc}") from None


@contextlib.contextmanager
def readable_many(checkpoints: list[Checkpoint], *, action: str) -> Iterator[list[Readable]]:
    """:func:`readable` for several checkpoints at once (one listing per bucket run)."""
    listings: dict[str, list[storage.Entry]] = {}
    with contextlib.ExitStack() as stack:
        found = []
        for checkpoint in checkpoints:
            directory = checkpoint.run.directory
            listing = None
            if on_object_storage(directory):
                if directory not in listings:
                    try:
                        object_directory(directory, must_exist=False)
                        listings[directory] = storage.storage_for(directory).list(directory)
                    except (ValueError, storage.StorageError) as exc:
                        raise ValueError(f"run {checkpoint.run.name}: {exc}") from None
                listing = listings[directory]
            try:
                found.append(stack.enter_context(readable(checkpoint, action=action, listing=listing)))
            except ValueError as exc:
                raise ValueError(f"run {checkpoint.run.name}: {exc}") from None
        yield found


@contextlib.contextmanager
def meta_file(checkpoint: Checkpoint) -> Iterator[str | None]:
    """A local path of the ``.meta`` ``checkpoint`` restores with (staged alone for a bucket run).

    No TensorFlow: the freeze form outlines the graph from it in the web process.
    """
    meta = checkpoint.meta_path()
    if meta is None or not on_object_storage(checkpoint.run.directory):
        yield meta
        return
    directory = object_directory(checkpoint.run.directory, must_exist=False)
    name = _meta_name(checkpoint)
    store = storage.storage_for(directory)
    try:
        entry = next((e for e in store.list(directory) if e.name == name), None)
    except storage.StorageError as exc:
        raise ValueError(str(exc)) from None
    if entry is None:
        raise FileNotFoundError(os.path.basename(meta))
    try:
        with cache().using(store, entry) as (path, _):
            yield path
    except staging.StagingError as exc:
        raise ValueError(str(exc)) from None
