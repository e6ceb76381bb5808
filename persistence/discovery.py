"""Find the checkpoints in one run directory and describe them, without loading any graph.

A checkpoint is identified by its ``PREFIX.index`` file, or, in TensorFlow's old V1
format (``Saver(write_version=V1)``), by one table file named exactly ``PREFIX`` with no index.
Everything here is plain Python plus TensorFlow's index reader; no Django, no settings.

Cost model, because scans run over directories with tens of thousands of checkpoints: one
``os.scandir`` pass, at most one ``stat`` per file that belongs to a checkpoint (or may be a state
file), and per checkpoint at most one open of its ``.index`` (never of its data files). A rescan
with ``known`` fingerprints opens no index that has not changed, and does not import TensorFlow
when nothing needs reading.

A scan has two phases, also offered separately to callers that record what is found while it is
still being read (``Run.scan``): :func:`list_directory` makes the one pass over the entries and
works out everything that needs the whole listing (state files, ``meta_source`` links, orphans,
the order of the result); :func:`describe` / :func:`describe_chunks` then describe checkpoints
one by one, which is where the time goes (TensorFlow's index reader holds the GIL).
``describe_chunks`` reads large batches in a forked child process, so that the caller can store
one chunk while the next is being read; :func:`scan_result` puts the pieces back together.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

from persistence import storage
from persistence.bucket_discovery import entries_stamp, index_urls_to_read, list_entries, listing_from_entries
from persistence.checkpoint_index import IndexReader, UnreadableIndex, index_shard_count
from persistence.forked_scan import describe_forked
from persistence.listing import (
    CORRUPT,
    DATA_FILE,
    INCOMPLETE,
    OBJECT_GRAPH_KEY,
    PRESENT,
    TF1,
    TF1_V1,
    TF2,
    UNKNOWN_FORMAT,
    UNREADABLE,
    DiscoveredCheckpoint,
    FileInfo,
    Listing,
    ScanResult,
    VariableInfo,
    cached_outcome,
    directory_stamp,
    files_digest,
    gc_paused,
    list_local,
    parse_step,
    prefix_family,
    run_base,
    split_step,
    stat_files,
)
from persistence.statefile import StateFile, StateFileError

__all__ = [
    "CORRUPT", "FORK_FROM", "INCOMPLETE", "OBJECT_GRAPH_KEY", "PRESENT", "TF1", "TF1_V1", "TF2", "UNKNOWN_FORMAT",
    "UNREADABLE",
    "DiscoveredCheckpoint", "FileInfo", "Listing", "ScanResult", "StateFile", "StateFileError", "VariableInfo",
    "describe", "describe_checkpoint", "describe_chunks", "directory_format", "directory_stamp", "entries_stamp",
    "gc_paused", "list_directory", "list_entries", "parse_step", "prefix_family", "scan_directory", "scan_result",
]


# describe_chunks() reads in a forked child from this many indexes to read. Below it the fork
# (about 10-20 ms with TensorFlow loaded) and the hand-over cost more than they save.
FORK_FROM = 2000
# Checkpoints per chunk: small enough that the two processes end close together, large enough
# that per-chunk costs (a pickle, a round of INSERTs) stay in the noise.
CHUNK_SIZE = 250


def scan_directory(
    directory: str, *, known: Mapping[str, str] | None = None, roots: Sequence[str | os.PathLike[str]] | None = None
) -> ScanResult:
    """Scan ``directory`` (not recursively).

    ``known`` maps prefix -> fingerprint from a previous scan; a checkpoint whose fingerprint is
    unchanged is returned with ``unchanged=True`` and its index is not read again: its
    ``variables`` are empty (keep the ones recorded before), everything else is filled in.
    Never raises for anything found on disk; what is wrong is reported in ``problems``.
    ``roots``: see :func:`list_directory`.
    """
    with gc_paused():
        listing = list_directory(directory, roots=roots)
        return _result(listing, _describe_many(listing, listing.prefixes, known or {}, IndexReader()))


def list_directory(
    directory: str, *, roots: Sequence[str | os.PathLike[str]] | None = None,
    entries: Iterable[storage.Entry] | None = None,
) -> Listing:
    """The cheap phase of a scan: one ``os.scandir`` pass and the state files.

    A directory in a bucket (an ``s3://`` URL) is listed with :func:`list_entries` instead, or
    taken from ``entries`` when the caller has just listed it; its state files are read whole.

    Reads no index, does not ``stat`` checkpoint files (describing them does) and never imports
    TensorFlow. Never raises for anything found on disk: a directory that cannot be read comes
    back empty with the reason in ``problems``.

    A symbolic link among the files is followed only when it resolves inside ``roots`` (default:
    the directory itself): a link created after the run was registered must not bring a file
    from elsewhere into the history, and from there into a freeze or a download. Such a link is
    reported in ``problems`` and otherwise ignored.
    """
    with gc_paused():
        if storage.is_url(directory):
            return listing_from_entries(directory, list_entries(directory) if entries is None else list(entries))
        return list_local(directory, [directory] if roots is None else list(roots))


def describe(
    listing: Listing, prefixes: Iterable[str] | None = None, *, known: Mapping[str, str] | None = None
) -> list[DiscoveredCheckpoint]:
    """Describe ``prefixes`` (default: every checkpoint of ``listing``, in its order), in this process.

    Each comes out exactly as :func:`scan_directory` would describe it; ``known`` as there.
    """
    chosen = listing.prefixes if prefixes is None else list(prefixes)
    with gc_paused():
        return _describe_many(listing, chosen, known or {}, IndexReader())


def describe_chunks(
    listing: Listing,
    prefixes: Iterable[str] | None = None,
    *,
    known: Mapping[str, str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    fork_from: int | None = FORK_FROM,
    only_when_idle: bool = True,
) -> Iterator[list[DiscoveredCheckpoint]]:
    """Describe ``prefixes`` like :func:`describe`, handing them out in chunks of ``chunk_size``.

    In this process the chunks come in the order given. When at least ``fork_from`` of them must
    be read (not in ``known``; None: never) and, with ``only_when_idle``, the machine seems to
    have a processor to spare (see ``_spare_cpu``), a child process forked at the first ``next()``
    describes them from the front while this one, between handing out the child's chunks (the
    caller stores each meanwhile), describes chunks from the back: the first chunk comes first,
    the others in any order; each holds its prefixes in the order given. The child only reads
    files and writes to a pipe: it runs no cleanup of the parent's (it leaves with ``os._exit``),
    so database or Redis connections inherited from the parent are never used or closed by it.
    Whatever a child that dies or gets stuck did not hand over is described here; a caller that
    stops early (closes the generator) ends the child. Results are the same as :func:`describe`'s.
    """
    chosen = listing.prefixes if prefixes is None else list(prefixes)
    known = known or {}
    to_read = len(chosen) if not known else sum(1 for prefix in chosen if prefix not in known)
    # Reading from a bucket waits on the network, not on a processor: no child for that.
    if (fork_from is not None and to_read >= max(fork_from, 1) and hasattr(os, "fork")
            and not storage.is_url(listing.directory)):
        if not only_when_idle or _spare_cpu():
            return describe_forked(listing, chosen, known, chunk_size, _describe_many)
    return _describe_in_process(listing, chosen, known, chunk_size)


def _spare_cpu() -> bool:
    """Whether a second process is likely to find a processor of its own.

    Forking costs CPU time (pages copied on write, results pickled across): measured, a quarter
    more in all for a 10,000-checkpoint scan. That pays off only in parallel; on a machine whose
    processors are all busy (the one-minute load, which counts this process, is above the number
    of processors less one half) the scan is faster in one process.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cpus > 1 and load < cpus - 0.5


def scan_result(listing: Listing, checkpoints: Iterable[DiscoveredCheckpoint]) -> ScanResult:
    """The :class:`ScanResult` for ``listing`` and its described ``checkpoints``, in any order."""
    position = {prefix: i for i, prefix in enumerate(listing.prefixes)}
    ordered = sorted(checkpoints, key=lambda c: position.get(c.prefix, len(position)))
    return _result(listing, ordered)


def directory_format(checkpoints: Iterable[DiscoveredCheckpoint]) -> str | None:
    """TF1 or TF2, whichever most readable checkpoints have; None when none is readable."""
    formats = Counter(TF1 if c.format == TF1_V1 else c.format for c in checkpoints if c.format in (TF1, TF1_V1, TF2))
    if not formats:
        return None
    return formats.most_common(1)[0][0]


def _result(listing: Listing, checkpoints: list[DiscoveredCheckpoint]) -> ScanResult:
    return ScanResult(
        directory=listing.directory,
        format=directory_format(checkpoints),
        checkpoints=checkpoints,
        state_files=listing.state_files,
        problems=listing.problems,
        orphans=listing.orphans,
    )


def _describe_many(
    listing: Listing, prefixes: Sequence[str], known: Mapping[str, str], reader: IndexReader
) -> list[DiscoveredCheckpoint]:
    directory, steps, meta_sources = listing.directory, listing.steps, listing.meta_sources
    timestamps, base = listing.timestamps, run_base(listing.directory)
    described = []
    for prefix in prefixes:
        stated = stat_files(listing, prefix)
        if stated is None:
            continue  # its index was deleted since the listing: a concurrent prune
        index, found, meta = stated
        if prefix in listing.v1:
            data, shard_problems = [], []  # the one file is index and data at once
        elif len(found) == 1 and found[0][0] == 0 and found[0][1] == 1:
            data, shard_problems = [found[0][2]], []  # the usual single shard: nothing to check
        else:
            data = [info for _, _, info in found]
            shard_problems = _shard_problems(directory, prefix, found)
        files = [index, *data, meta] if meta is not None else [index, *data]
        described.append((prefix, index, files, meta is not None, shard_problems))
    if storage.is_url(directory):
        # One GET per index to read, many in flight at once, instead of one round trip after another.
        reader.prefetch([base + prefix + ".index" for prefix, _, files, _, _ in described
                         if cached_outcome(known.get(prefix), files_digest(files)) is None])
    return [
        _describe(base, prefix, steps[prefix], index, files, has_meta, shard_problems, known.get(prefix),
                  meta_sources.get(prefix), timestamps, reader, v1=prefix in listing.v1)
        for prefix, index, files, has_meta, shard_problems in described
    ]


def _describe_in_process(
    listing: Listing, prefixes: list[str], known: Mapping[str, str], chunk_size: int
) -> Iterator[list[DiscoveredCheckpoint]]:
    reader = IndexReader()
    chunks = [prefixes[start : start + chunk_size] for start in range(0, len(prefixes), chunk_size)]
    in_bucket = storage.is_url(listing.directory)
    for i, chosen in enumerate(chunks):
        if in_bucket:
            # This chunk's indexes and the next one's are on their way while this one is read and
            # the caller stores the previous one: fetching overlaps with everything else.
            for ahead in chunks[i : i + 2]:
                reader.prefetch(index_urls_to_read(listing, ahead, known))
        with gc_paused():
            chunk = _describe_many(listing, chosen, known, reader)
        yield chunk


def _describe(
    base: str,  # the run directory with a trailing separator
    prefix: str,
    step: int | None,
    index: FileInfo,
    files: list[FileInfo],
    has_own_meta: bool,
    problems: list[str],
    known_fingerprint: str | None,
    meta_source: str | None,
    timestamps: Mapping[str, float],
    reader: IndexReader,
    *,
    v1: bool = False,
) -> DiscoveredCheckpoint:
    digest = files_digest(files)
    cached = cached_outcome(known_fingerprint, digest)
    unchanged = cached is not None
    variables: list[VariableInfo] = []
    transient = False
    if unchanged:
        fmt = cached
    else:
        try:
            fmt, variables = reader.read(base + prefix)
            if v1 and fmt == TF1:
                fmt = TF1_V1
        except UnreadableIndex as exc:
            fmt = UNKNOWN_FORMAT
            transient = not exc.corrupt
            if transient:
                problems.insert(0, f"cannot read {index.name} right now (retried by the next scan): {exc}")
            else:
                problems.insert(0, f"cannot read {index.name}: {exc}")
    if transient:
        # A missing shard is seen in the listing, whatever the index read said.
        status = INCOMPLETE if len(problems) > 1 else UNREADABLE
        # Never cached: the next scan must read the index again.
        fingerprint = f"{UNREADABLE}:{digest}"
    elif fmt == UNKNOWN_FORMAT:
        status = CORRUPT
        fingerprint = f"{fmt}:{digest}"
        if unchanged:
            problems.insert(0, f"cannot read {index.name} (unchanged since the last scan)")
    else:
        status = INCOMPLETE if problems else PRESENT
        fingerprint = f"{fmt}:{digest}"

    size_bytes = 0
    for info in files:
        size_bytes += info.size
    # Positional: a third of the cost of keywords, 10,000 times over (field order as declared).
    return DiscoveredCheckpoint(
        prefix, step, status, fmt, files, has_own_meta, meta_source, size_bytes,
        timestamps.get(prefix, index.mtime_ns / 1e9), variables, fingerprint, unchanged, problems,
    )


def _shard_problems(directory: str, prefix: str, shards: list[tuple[int, int, FileInfo]]) -> list[str]:
    if shards:
        # Two shard counts means files of two different saves under one prefix: judge by the larger.
        expected = max(count for _, count, _ in shards)
    else:
        expected = index_shard_count(run_base(directory) + prefix + ".index")
        if expected is None:
            return [f"no data file: {prefix}.data-00000-of-NNNNN is missing"]
    present = {shard for shard, count, _ in shards if count == expected}
    problems = []
    missing = [f"{prefix}.data-{i:05d}-of-{expected:05d}" for i in range(expected) if i not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"missing data shard{'s' if len(missing) > 1 else ''}: {shown}")
    stray = sorted(info.name for shard, count, info in shards if count != expected or shard >= count)
    if stray:
        problems.append(f"unexpected data files: {', '.join(stray)}")
    return problems


def describe_checkpoint(directory: str, prefix: str, *, meta_source: str | None = None) -> DiscoveredCheckpoint:
    """Describe one checkpoint exactly as :func:`scan_directory` would, without listing the directory.

    For a writer that knows what it just wrote (a save job recording each checkpoint the moment
    the Saver returns): a few ``stat`` calls and one ``.index`` read, whatever the directory's
    size. ``meta_source`` is the prefix whose ``.meta`` restores this one when the caller knows it
    (its own ``.meta`` wins). The fingerprint matches a later scan's, so that scan skips it.
    Raises ``FileNotFoundError`` when there is no ``PREFIX.index``.
    """
    def info(name: str) -> FileInfo:
        stat = os.stat(os.path.join(directory, name))
        return FileInfo(name, stat.st_size, stat.st_mtime_ns)

    index = info(prefix + ".index")
    shards = []
    for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + ".data-*-of-*")):
        name = os.path.basename(path)
        match = DATA_FILE.fullmatch(name)
        if match and match["prefix"] == prefix:
            try:
                shards.append((int(match["shard"]), int(match["count"]), info(name)))
            except FileNotFoundError:
                continue
    try:
        meta = info(prefix + ".meta")
    except FileNotFoundError:
        meta = None
    if len(shards) == 1 and shards[0][0] == 0 and shards[0][1] == 1:
        data, problems = [shards[0][2]], []
    else:
        data = sorted((f for _, _, f in shards), key=lambda f: f.name)
        problems = _shard_problems(directory, prefix, shards)
    files = [index, *data, meta] if meta is not None else [index, *data]
    return _describe(os.path.join(directory, ""), prefix, split_step(prefix)[1], index, files,
                     meta is not None, problems, None, prefix if meta is not None else meta_source, {},
                     IndexReader())
