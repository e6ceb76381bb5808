"""Describing a large batch of checkpoints in two processes: a forked child and this one.

TensorFlow's index reader holds the GIL, so a thread would not help; a child forked with TensorFlow
already imported reads chunks while the parent stores the ones it has (``discovery.describe_chunks``
decides when that pays). Results are exactly those of describing in one process.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence

from persistence.checkpoint_index import IndexReader
from persistence.listing import DiscoveredCheckpoint, FileInfo, Listing, VariableInfo, gc_paused, listed_files

# How a chunk is described in either process: discovery's own describing, passed in.
DescribeMany = Callable[[Listing, Sequence[str], Mapping[str, str], IndexReader], list[DiscoveredCheckpoint]]

# --- describing in a forked child ------------------------------------------------------------------
#
# The prefixes are cut into numbered chunks. The parent describes the first itself (it is wanted
# first, and waiting for the child to deliver it would idle the parent); the child describes the
# others from the front; the parent, whenever it has no chunk of the child's to hand out,
# describes one from the back, so that neither process idles while the other still has work,
# whatever the split between describing and storing, and however the machine's other load starves
# one of them. Two shared counters say how far each has come: the child stops where the parent's
# chunks begin. In the rare race where both take the same chunk, the parent keeps one copy; and
# whatever chunk the child did not hand over (it died, or was stuck) the parent describes too.
#
# The child sends one frame per chunk: 8 bytes of length, then a pickle of ``(number, variables,
# rows)``. ``rows`` hold each checkpoint's fields as plain values: ``files`` as their sizes and
# times only (the parent has their names in its listing), ``variables`` as an id: checkpoints of
# one model share one variable list, sent once as ``variables[id]``. Unpickling 10,000 full
# dataclasses measured three times as long as this. A zero length ends the stream; end of file
# before it means the child died.

_FRAME_HEADER = 8
# A child that hands over nothing for this long is taken for stuck (forking a process with
# threads can leave a lock held forever in the child) and ended; its work is done here instead.
# A chunk normally takes milliseconds; even 500 huge checkpoints on slow storage take far less.
STALL_SECONDS = 120.0
_CHILD_NEXT, _PARENT_LOW = 0, 1  # the shared counters: chunk numbers


def describe_forked(
    listing: Listing, prefixes: list[str], known: Mapping[str, str], chunk_size: int,
    describe_many: DescribeMany,
) -> Iterator[list[DiscoveredCheckpoint]]:
    from multiprocessing.sharedctypes import RawArray

    reader = IndexReader()
    reader.load()  # import TensorFlow here, before the fork, so that the child inherits it
    parts = [prefixes[start : start + chunk_size] for start in range(0, len(prefixes), chunk_size)]
    counters = RawArray("q", [1, len(parts)])  # shared memory, aligned 64-bit counters
    read_end, write_end = os.pipe()
    try:
        import fcntl

        # Room for a few chunks, so that the child keeps reading while the parent stores one.
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass
    # While the child lives, every page either process writes to is copied (copy-on-write), at
    # several microseconds a page on this kind of machine. A collection of the oldest generation
    # writes to every tracked object, TensorFlow's included: it measured as a full second of
    # copying in the parent. Frozen objects are left out of collections until unfrozen.
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child_main(listing, parts, known, reader, counters, write_end, describe_many)
    os.close(write_end)
    done: set[int] = set()
    try:
        with gc_paused():
            chunk = describe_many(listing, parts[0], known, reader)
        done.add(0)
        yield chunk
        frames = _Frames(read_end)
        variables: dict[int, list[VariableInfo]] = {}
        while len(done) < len(parts):
            low = counters[_PARENT_LOW] - 1
            helping = low >= counters[_CHILD_NEXT]  # chunks are left that the child has not begun
            payload = frames.take(timeout=0 if helping else STALL_SECONDS)
            if payload is _Frames.NOT_YET:
                counters[_PARENT_LOW] = low
                with gc_paused():
                    chunk = describe_many(listing, parts[low], known, reader)
                done.add(low)
                yield chunk
                continue
            if not payload:  # the end (b""), or None: the child died or is stuck
                break
            number, new_variables, rows = pickle.loads(payload)
            if number in done:
                continue  # the parent took it too (a race on the counters)
            with gc_paused():
                chunk = _decode_chunk(listing, new_variables, rows, variables)
            done.add(number)
            yield chunk
    finally:
        # Closing the pipe first makes a child still writing fail at once; whatever it was
        # doing, nothing of it is wanted any more.
        os.close(read_end)
        _end_child(pid)
        gc.unfreeze()
    # Whatever the child did not hand over (the OOM killer or a crash in a native library ended
    # it, or it was stuck) is read here; if that fails again, it fails in the caller's process.
    for number, part in enumerate(parts):
        if number not in done:
            with gc_paused():
                chunk = describe_many(listing, part, known, reader)
            yield chunk


class _Frames:
    """The child's frames, from its pipe: payload, ``b""`` at the end marker, ``NOT_YET`` when
    none is complete within ``timeout``, None at end of file or after ``STALL_SECONDS``."""

    NOT_YET = object()

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def take(self, *, timeout: float) -> bytes | object | None:
        while True:
            if len(self._buffer) >= _FRAME_HEADER:
                size = int.from_bytes(self._buffer[:_FRAME_HEADER], "little")
                if len(self._buffer) >= _FRAME_HEADER + size:
                    payload = bytes(self._buffer[_FRAME_HEADER : _FRAME_HEADER + size])
                    del self._buffer[: _FRAME_HEADER + size]
                    return payload
            ready, _, _ = select.select([self._fd], [], [], timeout)
            if not ready:
                return self.NOT_YET if timeout < STALL_SECONDS else None
            data = os.read(self._fd, 1 << 20)
            if not data:
                return None
            self._buffer += data


def _child_main(
    listing: Listing, parts: list[list[str]], known: Mapping[str, str], reader: IndexReader, counters,
    write_end: int, describe_many: DescribeMany,
) -> None:
    code = 1
    try:
        # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.disable()  # short-lived, and its results hold no cycles
        variable_ids: dict[int, int] = {}
        keep: list[list[VariableInfo]] = []  # keeps id()s of sent lists from being reused
        with os.fdopen(write_end, "wb") as out:
            for number in range(1, len(parts)):
                if number >= counters[_PARENT_LOW]:
                    break  # the parent has taken the rest
                counters[_CHILD_NEXT] = number + 1
                chunk = describe_many(listing, parts[number], known, reader)
                message = (number, *_encode_chunk(listing, chunk, variable_ids, keep))
                payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
                out.write(len(payload).to_bytes(_FRAME_HEADER, "little"))
                out.write(payload)
                out.flush()
            out.write(bytes(_FRAME_HEADER))
        code = 0
    finally:
        # Whatever happened: no exception may climb into the parent's frames (their ``finally``
        # blocks and context managers would run here, e.g. roll back its database transaction),
        # and no exit handler or buffered output of the parent's may run or be flushed twice.
        os._exit(code)


def _encode_chunk(
    listing: Listing, chunk: list[DiscoveredCheckpoint], variable_ids: dict[int, int],
    keep: list[list[VariableInfo]],
) -> tuple[dict[int, list[VariableInfo]], list[tuple]]:
    new_variables = {}
    rows = []
    shards, metas = listing.shards, listing.metas
    for c in chunk:
        key = id(c.variables)
        number = variable_ids.get(key)
        if number is None:
            number = variable_ids[key] = len(keep)
            keep.append(c.variables)
            new_variables[number] = c.variables
        stats = tuple([value for info in c.files for value in (info.size, info.mtime_ns)])
        # Files are only ever missing from what was listed (deleted meanwhile): then say which are left.
        listed = 1 + len(shards.get(c.prefix, ())) + (c.prefix in metas)
        names = None if len(c.files) == listed else tuple(info.name for info in c.files)
        rows.append((c.prefix, c.status, c.format, c.has_own_meta, c.size_bytes, c.saved_at, number,
                     c.fingerprint, c.unchanged, c.problems or None, stats, names))
    return new_variables, rows


def _decode_chunk(
    listing: Listing, new_variables: dict[int, list[VariableInfo]], rows: list[tuple],
    variables: dict[int, list[VariableInfo]],
) -> list[DiscoveredCheckpoint]:
    variables.update(new_variables)
    steps, meta_sources = listing.steps, listing.meta_sources
    chunk = []
    for (prefix, status, fmt, has_own_meta, size_bytes, saved_at, number, fingerprint, unchanged, problems,
         stats, names) in rows:
        if names is None:
            index, found, meta = listed_files(listing, prefix)
            names = [index.name, *[entry.name for _, _, entry in found]]
            if meta is not None:
                names.append(meta.name)
        files = list(map(FileInfo, names, stats[0::2], stats[1::2]))
        # Positional: a third of the cost of keywords, 10,000 times over (field order as declared).
        chunk.append(DiscoveredCheckpoint(
            prefix, steps[prefix], status, fmt, files, has_own_meta, meta_sources.get(prefix), size_bytes,
            saved_at, variables[number], fingerprint, unchanged, problems or [],
        ))
    return chunk


def _end_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped (SIGCHLD ignored)
        pass
