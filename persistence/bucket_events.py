"""TensorBoard event files of a run in a bucket: found by listing, read from where the last read stopped.

A trainer writing to ``s3://`` or ``gs://`` replaces the event file object each time it flushes,
with the old bytes plus what it appended. Each object's size and ETag (GCS: generation) come with
the listing, so an unchanged file costs no request beyond that listing; a grown one costs ranged
GETs of the new bytes only, copied into a private local file for TensorFlow's record reader
(``events.read_records``), which reads local files only. A shorter object than what was read is a
rewritten file: it is read again from the start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

from persistence import events, storage

# Bytes fetched per ranged GET: memory stays bounded by this, whatever was appended.
PART_BYTES = 8 << 20


def find_event_objects(
    directory: str, *, top: tuple[list[storage.Entry], list[str]] | None = None,
    folders: Iterable[str] | None = None, max_depth: int = events.MAX_DEPTH,
) -> list[events.EventFileRef]:
    """Event files in the run ``directory`` and below it, like ``events.find_event_files``.

    ``top``: the run directory's own listing (objects and subfolder names) when the caller has
    just made it; None lists it here (one LIST per 1,000 keys). ``folders``: look only in these
    subfolders, not at the run directory's own objects (a run whose listing did not change since
    event files were last looked for: its own event files did not change either). Each subfolder
    looked at costs a LIST per level. Raises ``storage.StorageError`` when a listing fails.
    """
    store = storage.storage_for(directory)
    found: list[events.EventFileRef] = []

    def take(entries: list[storage.Entry], rel: str) -> None:
        for entry in entries:
            if entry.name.startswith(events.EVENT_FILE_MARK):
                found.append(events.EventFileRef(f"{rel}{entry.name}", entry.size, entry.etag))

    def walk(url: str, rel: str, depth: int) -> None:
        entries, subfolders, _ = store.list_with_prefixes(url)
        take(entries, rel)
        if depth < max_depth:
            for name in sorted(subfolders):
                if events.could_hold_event_files(name):
                    walk(f"{url}/{name}", f"{rel}{name}/", depth + 1)

    base = directory.rstrip("/")
    if folders is not None:
        for name in sorted(set(folders)):
            if events.could_hold_event_files(name):
                walk(f"{base}/{name}", f"{name}/", 1)
    else:
        entries, subfolders = top if top is not None else store.list_with_prefixes(directory)[:2]
        take(entries, "")
        if max_depth > 0:
            for name in sorted(subfolders):
                if events.could_hold_event_files(name):
                    walk(f"{base}/{name}", f"{name}/", 1)
    found.sort(key=lambda ref: (os.path.dirname(ref.path), os.path.basename(ref.path)))
    return found


def read_event_object(directory: str, ref: events.EventFileRef, state: events.EventFileState) -> events.EventRead:
    """Read the scalar summaries appended to one event file object since ``state``: ranged GETs of
    bytes ``[state.offset, ref.size)`` (the listed size), nothing when that range is empty.

    Imports TensorFlow when there is something to read. Raises ``OSError`` (``storage.StorageError``,
    ``FileNotFoundError``) when the object cannot be read; never for what is inside it.
    """
    url = storage.resolve_inside(f"{directory.rstrip('/')}/{ref.path}", [directory])
    restarted = False
    if ref.size < state.offset:
        state, restarted = events.EventFileState(), True
    if ref.size == state.offset:
        return events.EventRead(state, {}, restarted=restarted)
    store = storage.storage_for(url)
    with tempfile.NamedTemporaryFile(prefix="events-", suffix=".part") as handle:
        for start in range(state.offset, ref.size, PART_BYTES):
            data = store.read_range(url, start, min(start + PART_BYTES, ref.size))
            handle.write(data)
            if len(data) < min(PART_BYTES, ref.size - start):
                break  # replaced by a shorter object meanwhile: what arrived is read, the rest next time
        handle.flush()
        read = events.read_records(handle.name, ref, state, base=state.offset)
    read.restarted = restarted
    return read
