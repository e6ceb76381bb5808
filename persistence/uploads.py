"""Copying checkpoints written in a local working directory into a run in a bucket.

TensorFlow cannot write ``s3://``, so a save into a bucket run trains locally and then uploads.
Two rules make the bucket look, at every moment, like a directory a Saver writes into:

- a checkpoint's objects go up data shards first, then its ``.meta``, and its ``.index`` last: a
  scan recognises a checkpoint by its ``.index``, so it never sees one without its data;
- the state object is then merged, never replaced: it is read, the new checkpoint is added to
  what it lists, and it is written back only if it is still what was read (a conditional PUT on
  its ETag). Another writer in between makes the write fail; the object is read again and the
  merge redone, so whatever that writer listed stays listed.

Nothing here deletes an object. Plain functions, no Django.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import statefile, storage

MERGE_ATTEMPTS = 10


class UploadError(OSError):
    """A checkpoint or the state object could not be written to the bucket."""


def upload_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order they must reach the bucket: data shards, then ``.meta``, then ``.index``."""

    def rank(name: str) -> tuple[int, str]:
        if name.endswith(".index"):
            return 2, name
        if name.endswith(".meta"):
            return 1, name
        return 0, name

    return sorted(names, key=rank)


def upload_checkpoint(local_directory: str, names: Iterable[str], directory: str) -> list[str]:
    """Upload the files ``names`` of ``local_directory`` into the bucket prefix ``directory``.

    In :func:`upload_order`. Returns the URLs written. Raises :class:`UploadError`.
    """
    store = storage.storage_for(directory)
    written = []
    for name in upload_order(names):
        url = storage.join(directory, name)
        try:
            store.upload(os.path.join(local_directory, name), url)  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            raise UploadError(f"cannot upload {name} to {directory}: {exc}") from None
        written.append(url)
    return written


@dataclass
class MergedState:
    """The state object as this merge wrote it."""

    latest: str
    all_prefixes: list[str]
    etag: str
    attempts: int  # 1 unless another writer changed the object between our read and our write
    kept_from_others: list[str] = field(default_factory=list)  # entries listed by someone else, kept
    replaced_problem: str | None = None  # the object did not parse and was replaced


def merge_state_object(
    directory: str,
    name: str,
    *,
    latest: str,
    saved_at: float,
    attempts: int = MERGE_ATTEMPTS,
    after_read: Callable[[], None] | None = None,
) -> MergedState:
    """Add ``latest`` to the state object ``directory/name`` and make it the latest checkpoint.

    Every checkpoint already listed stays listed, in its place; ``latest`` goes to the end (as a
    Saver appends it). Timestamps are kept, and ``saved_at`` is added for ``latest``, when the
    object already carries one for every path (a ``CheckpointManager``'s state); a Saver's state
    has none, and gets none. An object that does not parse is replaced, as a Saver replaces it.
    The write is conditional on the ETag read (``if_absent`` when there was none); on
    ``PreconditionFailed`` the merge starts over from a fresh read, up to ``attempts`` times.
    ``after_read`` runs between the read and the write of each attempt.
    """
    store = storage.storage_for(directory)
    url = storage.join(directory, name)
    for attempt in range(1, attempts + 1):
        try:
            # The bytes and the version they are (one GET): what the conditional write is against.
            data, etag_read = store.read_versioned(url, limit=statefile.MAX_STATE_FILE_BYTES)  # type: ignore[attr-defined]
        except FileNotFoundError:
            data, etag_read = None, None  # none yet: written only if still absent
        except (OSError, ValueError) as exc:
            raise UploadError(f"cannot read {name} in {directory}: {exc}") from None
        merged, kept, problem = _merged(data, name, directory, latest, saved_at)
        if after_read is not None:
            after_read()
        try:
            etag = store.put_bytes(  # type: ignore[attr-defined]
                url, merged.encode("utf-8"),
                if_match=etag_read, if_absent=etag_read is None,
            )
        except storage.PreconditionFailed:
            continue
        except (OSError, ValueError) as exc:
            raise UploadError(f"cannot write {name} in {directory}: {exc}") from None
        state = statefile.parse_state_text(merged, name, directory)
        return MergedState(latest, state.all_prefixes, etag, attempt, kept, problem)
    raise UploadError(f"{name} in {directory} kept changing while it was being updated ({attempts} attempts)")


def _merged(data: bytes | None, name: str, directory: str, latest: str,
            saved_at: float) -> tuple[str, list[str], str | None]:
    """The new text of the state object, the entries of others it keeps, and why it was unusable."""
    state, problem = None, None
    if data is not None:
        try:
            state = statefile.parse_state_bytes(data, name, directory)
        except statefile.StateFileError as exc:
            problem = str(exc)
    if state is None:
        text = statefile.format_state_text(latest=latest, all_prefixes=[latest])
        return text, [], problem
    listed = [p for p in state.all_prefixes if p != latest]
    if state.latest and state.latest not in listed and state.latest != latest:
        # model_checkpoint_path alone (a hand-edited file): it stays known, as an entry.
        listed.append(state.latest)
    timestamps = None
    if state.timestamps and all(p in state.timestamps for p in listed):
        timestamps = {**state.timestamps, latest: float(saved_at)}
    text = statefile.format_state_text(
        latest=latest, all_prefixes=[*listed, latest], timestamps=timestamps,
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    return text, listed, None
