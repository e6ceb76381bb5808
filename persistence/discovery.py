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

import bisect
import gc
import hashlib
import os
import pickle
import re
import select
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from persistence import damage, storage
from persistence.statefile import (
    StateFile,
    StateFileError,
    could_be_state_file,
    order_state_file_names,
    sniff_state_file,
)

__all__ = [
    "CORRUPT", "FORK_FROM", "INCOMPLETE", "OBJECT_GRAPH_KEY", "PRESENT", "TF1", "TF1_V1", "TF2", "UNKNOWN_FORMAT",
    "UNREADABLE",
    "DiscoveredCheckpoint", "FileInfo", "Listing", "ScanResult", "StateFile", "StateFileError", "VariableInfo",
    "describe", "describe_checkpoint", "describe_chunks", "directory_format", "directory_stamp", "entries_stamp",
    "gc_paused", "list_directory", "list_entries", "parse_step", "prefix_family", "scan_directory", "scan_result",
]

PRESENT = "present"
INCOMPLETE = "incomplete"
CORRUPT = "corrupt"
# The index could not be read for a reason that says nothing about its bytes (permissions, an I/O
# error or timeout, memory): not a status to record. The recorder keeps the status it had (a new
# checkpoint is present), and the next scan reads the index again.
UNREADABLE = "unreadable"

TF1 = "tf1"
TF2 = "tf2"
# A TF1 checkpoint in the V1 format: one file ``PREFIX`` (a table of tensor slices), no ``.index``.
TF1_V1 = "tf1-v1"
# The last 8 bytes of every LevelDB-format table TensorFlow writes (a V1 checkpoint, a V2 index):
# kTableMagicNumber 0xdb4775248b80fb57, little-endian.
_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
_TABLE_FOOTER_BYTES = 48
# ``format`` of a checkpoint whose index could not be read.
UNKNOWN_FORMAT = "unknown"

# The key under which TF2 object-based checkpoints store their object graph: not a variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

_DATA_FILE = re.compile(r"(?P<prefix>.+)\.data-(?P<shard>\d+)-of-(?P<count>\d+)")
_STEP = re.compile(r"(?P<family>.*)-(?P<step>\d+)")
# A V1 checkpoint saved with ``sharded=True``: its prefix is the pattern PREFIX-?????-of-NNNNN.
_V1_SHARD = re.compile(r"(?P<prefix>.+)-(?P<shard>\d{5})-of-(?P<count>\d{5})")

# describe_chunks() reads in a forked child from this many indexes to read. Below it the fork
# (about 10-20 ms with TensorFlow loaded) and the hand-over cost more than they save.
FORK_FROM = 2000
# Checkpoints per chunk: small enough that the two processes end close together, large enough
# that per-chunk costs (a pickle, a round of INSERTs) stay in the noise.
CHUNK_SIZE = 250


@dataclass(frozen=True, slots=True)
class FileInfo:
    name: str  # base name inside the run directory
    size: int
    mtime_ns: int
    etag: str = ""  # objects in a bucket: the ETag from the listing (part of the fingerprint)


@dataclass(frozen=True, slots=True)
class VariableInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # TensorFlow's name: "float32", "int64", ...
    nbytes: int  # product(shape) * dtype size; 0 for strings / unknown sizes


@dataclass
class DiscoveredCheckpoint:
    prefix: str  # base name, e.g. "model.ckpt-1000" or "ckpt-3"
    step: int | None  # from the trailing "-N"; None without one
    status: str  # PRESENT | INCOMPLETE | CORRUPT | UNREADABLE
    format: str  # TF1 | TF2 (TF2 when the index holds an object graph) | TF1_V1; UNKNOWN_FORMAT if unreadable
    files: list[FileInfo]  # index (for V1: the checkpoint file), every data shard found, own .meta when present
    has_own_meta: bool
    meta_source: str | None  # prefix whose .meta this one restores with (itself when it has one)
    size_bytes: int  # sum of files
    saved_at: float  # POSIX seconds: state-file timestamp when present, else .index mtime
    variables: list[VariableInfo]  # sorted by name; empty when ``unchanged`` (not re-read)
    # Changes whenever any of the checkpoint's files changes. Opaque: it also carries what the
    # index said (format, or unreadable) so that an unchanged checkpoint keeps both without a read.
    fingerprint: str
    unchanged: bool = False  # True when ``known`` had this fingerprint: variables were not re-read
    problems: list[str] = field(default_factory=list)  # e.g. "missing data shard ...", reader error


@dataclass
class ScanResult:
    directory: str
    format: str | None  # TF1 / TF2, the most common among readable checkpoints; None when none
    checkpoints: list[DiscoveredCheckpoint]  # by family, then step
    state_files: list[StateFile]
    problems: list[str]
    # Checkpoint files without a ``.index``: data shards of a half-deleted checkpoint, or a
    # ``.meta`` kept alive as another checkpoint's meta_source after its own checkpoint was pruned.
    orphans: list[FileInfo] = field(default_factory=list)


@dataclass
class Listing:
    """One pass over a run directory: everything that needs the whole listing, before any index is read."""

    directory: str
    prefixes: list[str]  # one per ``.index`` (or V1 file), by family then step: the order of ``ScanResult.checkpoints``
    state_files: list[StateFile]
    problems: list[str]  # about the directory and its state files (per-checkpoint ones come with each)
    orphans: list[FileInfo]  # as in ScanResult
    meta_sources: dict[str, str]  # prefix -> the prefix whose .meta it restores with, where there is one
    # What describing a checkpoint takes from the listing: its files' entries (not yet stat'ed:
    # that is part of describing, which may run in another process), step, state-file time.
    # In a bucket the entries are ``storage.Entry`` objects, which carry what a stat would say.
    indexes: dict[str, os.DirEntry[str]] = field(default_factory=dict, repr=False)
    metas: dict[str, os.DirEntry[str]] = field(default_factory=dict, repr=False)
    shards: dict[str, list[tuple[int, int, os.DirEntry[str]]]] = field(default_factory=dict, repr=False)
    steps: dict[str, int | None] = field(default_factory=dict, repr=False)
    timestamps: dict[str, float] = field(default_factory=dict, repr=False)
    # Prefixes in the V1 format: their entry in ``indexes`` is the checkpoint file itself.
    v1: frozenset[str] = frozenset()


def parse_step(prefix: str) -> int | None:
    """The global step in a prefix: ``model.ckpt-1000`` → 1000, ``ckpt-3`` → 3, ``model.ckpt`` → None."""
    return _split_step(prefix)[1]


def prefix_family(prefix: str) -> str:
    """The prefix without its step: the checkpoints one saver wrote (``model.ckpt-1000`` → ``model.ckpt``)."""
    return _split_step(prefix)[0]


def directory_stamp(directory: str, *, now: float | None = None, settle_seconds: float = 1.0) -> str | None:
    """A token that changes whenever an entry of ``directory`` is added, removed or renamed.

    TensorFlow writes every checkpoint file and state file through a rename, and deleting one
    removes an entry, so an unchanged stamp means a rescan would find nothing new. (Rewriting a
    file in place does not change it: verification, not scanning, is what catches damaged files.)
    Returns None while the directory changed within ``settle_seconds`` of ``now``: on file
    systems with coarse timestamps a change in the same tick could otherwise go unnoticed. Take
    the stamp *before* listing the directory, so that a change during the scan is seen next time.
    """
    stat = os.stat(directory)
    now = time.time() if now is None else now
    if now - stat.st_mtime < settle_seconds:
        return None
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}"


def list_entries(directory: str) -> list[storage.Entry]:
    """The files of a run directory in a bucket: one LIST request per 1,000 keys, nothing else.

    A bucket has no directory stamp to look at first: a rescan lists, compares
    :func:`entries_stamp` with the last one, and hands the same entries to :func:`list_directory`
    when something changed. Raises ``storage.StorageError`` when the bucket cannot be listed:
    a scan must not take an unreachable bucket for an emptied run.
    """
    return storage.storage_for(directory).list(directory)


def entries_stamp(entries: Iterable[storage.Entry]) -> str:
    """What :func:`directory_stamp` is for a local directory, for a bucket listing: a digest of
    every key with its size, ETag and last-modified time (objects are replaced, never rewritten
    in place, so a new ETag or time means new content)."""
    digest = hashlib.blake2b(digest_size=16)
    for entry in sorted(entries, key=lambda e: e.name):
        line = f"{entry.name}\t{entry.size}\t{entry.etag}\t{entry.mtime_ns}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return "objects:" + digest.hexdigest()


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
        return _result(listing, _describe_many(listing, listing.prefixes, known or {}, _IndexReader()))


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
            return _list_entries(directory, list_entries(directory) if entries is None else list(entries))
        return _list(directory, [directory] if roots is None else list(roots))


def describe(
    listing: Listing, prefixes: Iterable[str] | None = None, *, known: Mapping[str, str] | None = None
) -> list[DiscoveredCheckpoint]:
    """Describe ``prefixes`` (default: every checkpoint of ``listing``, in its order), in this process.

    Each comes out exactly as :func:`scan_directory` would describe it; ``known`` as there.
    """
    chosen = listing.prefixes if prefixes is None else list(prefixes)
    with gc_paused():
        return _describe_many(listing, chosen, known or {}, _IndexReader())


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
            return _describe_forked(listing, chosen, known, chunk_size)
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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a scan allocates its (acyclic) results.

    Also for callers that turn a large scan into rows (``Run.scan``), for the same reason.

    A scan of 10,000 checkpoints creates a few hundred thousand small objects; each time that
    triggers a full collection, the collector also walks every object TensorFlow's import left in
    the process (hundreds of thousands), which measured as a third of a rescan. The objects a
    scan creates hold no reference cycles (reference counting frees them as usual); cycles made
    meanwhile by others, e.g. TensorFlow's first import, are collected once the scan is over.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _list(directory: str, roots: list[str | os.PathLike[str]]) -> Listing:
    indexes: dict[str, os.DirEntry[str]] = {}
    metas: dict[str, os.DirEntry[str]] = {}
    shards: dict[str, list[tuple[int, int, os.DirEntry[str]]]] = {}  # prefix -> (shard, count, entry)
    state_candidates: list[str] = []
    problems: list[str] = []
    others: dict[str, os.DirEntry[str]] = {}
    try:
        with os.scandir(directory) as iterator:
            for entry in iterator:
                try:
                    # is_symlink() comes from the listing (d_type): no system call for plain files.
                    if entry.is_symlink() and not _link_allowed(entry.path, roots):
                        problems.append(f"{entry.name} is a symbolic link leading outside the checkpoint "
                                        "roots; ignored")
                        continue
                    _sort_entry(entry, indexes, metas, shards, state_candidates, others)
                except OSError:
                    # Deleted between the listing and the stat: a concurrent prune or save.
                    # The next scan sees the settled state.
                    continue
    except OSError as exc:
        return Listing(directory=directory, prefixes=[], state_files=[], orphans=[], meta_sources={},
                       problems=[f"cannot read directory {directory}: {exc.strerror or exc}"])
    v1, sharded_v1 = _v1_checkpoints(others, indexes, metas)
    return _finish_listing(directory, indexes, metas, shards, state_candidates, problems, v1, sharded_v1)


def _list_entries(directory: str, entries: list[storage.Entry]) -> Listing:
    # A bucket has no symbolic links, and its entries already carry size and fingerprint.
    indexes: dict = {}
    metas: dict = {}
    shards: dict = {}
    state_candidates: list[str] = []
    others: dict = {}
    for entry in entries:
        _sort_entry(entry, indexes, metas, shards, state_candidates, others)
    # TensorFlow's V1 format (one file per checkpoint, recognised by its last bytes) is not looked
    # for in buckets: that would cost a GET per unrecognised file on every changed scan.
    return _finish_listing(directory, indexes, metas, shards, state_candidates, [], {}, [])


def _finish_listing(
    directory: str, indexes: dict, metas: dict, shards: dict, state_candidates: list[str],
    problems: list[str], v1: dict, sharded_v1: list[str],
) -> Listing:
    problems.extend(
        f"{name}: a sharded checkpoint in TensorFlow's V1 format, which is not supported "
        "(re-save it in the V2 format to see it here)" for name in sharded_v1
    )
    if v1:
        indexes.update(v1)
        state_candidates = [name for name in state_candidates if name not in v1]
    state_files = _read_state_files(directory, state_candidates, indexes, problems)

    orphans = []
    for entry in [e for prefix, found in shards.items() if prefix not in indexes for _, _, e in found] + [
        e for prefix, e in metas.items() if prefix not in indexes
    ]:
        try:
            orphans.append(_file_info(entry))
        except OSError:
            continue  # gone meanwhile: a concurrent prune
    orphans.sort(key=lambda info: info.name)

    names = {prefix: _split_step(prefix) for prefix in indexes}
    names.update((prefix, _split_step(prefix)) for prefix in metas if prefix not in names)
    order = {prefix: (names[prefix][0], -1 if names[prefix][1] is None else names[prefix][1], prefix)
             for prefix in indexes}
    return Listing(
        directory=directory,
        prefixes=sorted(indexes, key=order.__getitem__),
        state_files=state_files,
        problems=problems,
        orphans=orphans,
        meta_sources=_meta_sources(indexes, metas, names),
        indexes=indexes,
        metas=metas,
        shards=shards,
        steps={prefix: names[prefix][1] for prefix in indexes},
        timestamps=_state_timestamps(state_files),
        v1=frozenset(v1),
    )


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
    listing: Listing, prefixes: Sequence[str], known: Mapping[str, str], reader: _IndexReader
) -> list[DiscoveredCheckpoint]:
    directory, steps, meta_sources = listing.directory, listing.steps, listing.meta_sources
    timestamps, base = listing.timestamps, _base(listing.directory)
    described = []
    for prefix in prefixes:
        stated = _stat_files(listing, prefix)
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
                         if _cached_outcome(known.get(prefix), _digest(files)) is None])
    return [
        _describe(base, prefix, steps[prefix], index, files, has_meta, shard_problems, known.get(prefix),
                  meta_sources.get(prefix), timestamps, reader, v1=prefix in listing.v1)
        for prefix, index, files, has_meta, shard_problems in described
    ]


def _index_urls_to_read(listing: Listing, prefixes: Sequence[str], known: Mapping[str, str]) -> list[str]:
    """The ``.index`` objects describing ``prefixes`` will read: those not unchanged since ``known``."""
    base, urls = _base(listing.directory), []
    for prefix in prefixes:
        index_entry, found, meta_entry = _listed_files(listing, prefix)
        files = [_file_info(index_entry), *(_file_info(e) for _, _, e in found)]
        if meta_entry is not None:
            files.append(_file_info(meta_entry))
        if _cached_outcome(known.get(prefix), _digest(files)) is None:
            urls.append(base + prefix + ".index")
    return urls


def _base(directory: str) -> str:
    """The directory with a trailing separator, to which a prefix is appended."""
    return directory.rstrip("/") + "/" if storage.is_url(directory) else os.path.join(directory, "")


def _listed_files(
    listing: Listing, prefix: str
) -> tuple[os.DirEntry[str], list[tuple[int, int, os.DirEntry[str]]], os.DirEntry[str] | None]:
    """A checkpoint's entries: index, data shards (by name), own .meta: the order of its ``files``."""
    found = listing.shards.get(prefix, [])
    if len(found) > 1:
        found = sorted(found, key=lambda item: item[2].name)
    return listing.indexes[prefix], found, listing.metas.get(prefix)


def _stat_files(
    listing: Listing, prefix: str
) -> tuple[FileInfo, list[tuple[int, int, FileInfo]], FileInfo | None] | None:
    """``_listed_files`` stat'ed; files deleted since the listing are left out (None: the index)."""
    index_entry, found, meta_entry = _listed_files(listing, prefix)
    try:
        index = _file_info(index_entry)
    except OSError:
        return None
    shards = []
    for shard, count, entry in found:
        try:
            shards.append((shard, count, _file_info(entry)))
        except OSError:
            continue
    meta = None
    if meta_entry is not None:
        try:
            meta = _file_info(meta_entry)
        except OSError:
            pass
    return index, shards, meta


def _describe_in_process(
    listing: Listing, prefixes: list[str], known: Mapping[str, str], chunk_size: int
) -> Iterator[list[DiscoveredCheckpoint]]:
    reader = _IndexReader()
    chunks = [prefixes[start : start + chunk_size] for start in range(0, len(prefixes), chunk_size)]
    in_bucket = storage.is_url(listing.directory)
    for i, chosen in enumerate(chunks):
        if in_bucket:
            # This chunk's indexes and the next one's are on their way while this one is read and
            # the caller stores the previous one: fetching overlaps with everything else.
            for ahead in chunks[i : i + 2]:
                reader.prefetch(_index_urls_to_read(listing, ahead, known))
        with gc_paused():
            chunk = _describe_many(listing, chosen, known, reader)
        yield chunk


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


def _describe_forked(
    listing: Listing, prefixes: list[str], known: Mapping[str, str], chunk_size: int
) -> Iterator[list[DiscoveredCheckpoint]]:
    from multiprocessing.sharedctypes import RawArray

    reader = _IndexReader()
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
        _child_main(listing, parts, known, reader, counters, write_end)
    os.close(write_end)
    done: set[int] = set()
    try:
        with gc_paused():
            chunk = _describe_many(listing, parts[0], known, reader)
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
                    chunk = _describe_many(listing, parts[low], known, reader)
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
                chunk = _describe_many(listing, part, known, reader)
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
    listing: Listing, parts: list[list[str]], known: Mapping[str, str], reader: _IndexReader, counters,
    write_end: int,
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
                chunk = _describe_many(listing, parts[number], known, reader)
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
            index, found, meta = _listed_files(listing, prefix)
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


def _link_allowed(path: str, roots: list[str | os.PathLike[str]]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots))


def _sort_entry(
    entry: os.DirEntry[str],
    indexes: dict[str, os.DirEntry[str]],
    metas: dict[str, os.DirEntry[str]],
    shards: dict[str, list[tuple[int, int, os.DirEntry[str]]]],
    state_candidates: list[str],
    others: dict[str, os.DirEntry[str]],
) -> None:
    # is_file() comes from the listing itself (d_type): it skips e.g. the PREFIX_temp/ directory
    # of a save in progress without a system call.
    if not entry.is_file():
        return
    name = entry.name
    if name.endswith(".index"):
        indexes[name[:-6]] = entry
    elif name.endswith(_SINGLE_SHARD) and len(name) > len(_SINGLE_SHARD):
        # What _DATA_FILE would find in the usual name, without the regular expression.
        shards.setdefault(name[: -len(_SINGLE_SHARD)], []).append((0, 1, entry))
    elif name.endswith(".meta"):
        metas[name[:-5]] = entry
    elif ".data-" in name and (match := _DATA_FILE.fullmatch(name)):
        shards.setdefault(match["prefix"], []).append((int(match["shard"]), int(match["count"]), entry))
    else:
        others[name] = entry  # maybe a V1 checkpoint: decided once the whole listing is known
        if could_be_state_file(name, entry.stat().st_size):
            state_candidates.append(name)


def _v1_checkpoints(
    others: Mapping[str, os.DirEntry[str]], indexes: Mapping[str, os.DirEntry[str]],
    metas: Mapping[str, os.DirEntry[str]],
) -> tuple[dict[str, os.DirEntry[str]], list[str]]:
    """The V1 checkpoints among files no other rule claimed: prefix -> its one file; and the files
    of sharded V1 checkpoints, which are only reported (their prefix is a glob pattern).

    Only names that look like a checkpoint (a step suffix, or a ``.meta`` beside them) are opened,
    and of those only the last 8 bytes: a V1 checkpoint is a table ending in the table magic.
    """
    found: dict[str, os.DirEntry[str]] = {}
    sharded: list[str] = []
    for name, entry in sorted(others.items()):
        if name in indexes or (name not in metas and _split_step(name)[1] is None):
            continue
        try:
            if entry.stat().st_size < _TABLE_FOOTER_BYTES:
                continue
            with open(entry.path, "rb") as handle:
                handle.seek(-len(_TABLE_MAGIC), os.SEEK_END)
                tail = handle.read(len(_TABLE_MAGIC))
        except OSError:
            continue  # deleted or unreadable meanwhile: the next scan sees the settled state
        if tail != _TABLE_MAGIC:
            continue
        if _V1_SHARD.fullmatch(name):
            sharded.append(name)
        else:
            found[name] = entry
    return found, sharded


_SINGLE_SHARD = ".data-00000-of-00001"


def _file_info(entry: os.DirEntry[str] | storage.Entry) -> FileInfo:
    if isinstance(entry, storage.Entry):
        return FileInfo(entry.name, entry.size, entry.mtime_ns, entry.etag)
    # Not entry.stat(), which keeps its result: a listing described again must see the files anew.
    stat = os.stat(entry.path)
    return FileInfo(entry.name, stat.st_size, stat.st_mtime_ns)


def _split_step(prefix: str) -> tuple[str, int | None]:
    # _STEP.fullmatch without the regular expression (a third of the cost): the step is what
    # follows the last "-" when that is all digits ("\d" is str.isdecimal), and "." in the
    # pattern does not match a newline.
    family, dash, digits = prefix.rpartition("-")
    if dash and digits.isdecimal() and "\n" not in family:
        return family, int(digits)
    return prefix, None


def _read_state_files(
    directory: str, candidates: list[str], indexes: Mapping[str, FileInfo], problems: list[str]
) -> list[StateFile]:
    state_files = []
    for name in order_state_file_names(candidates):
        state = sniff_state_file(directory, name)
        if state is None:
            continue
        if state.latest is not None:
            named = [state.latest] + [p for p in state.all_prefixes if p != state.latest]
            missing = [p for p in named if p not in indexes]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                text = f"names checkpoints with no .index file: {shown}"
                state.problem = f"{state.problem}; {text}" if state.problem else text
        if state.problem:
            kind = "garbage state file" if state.latest is None else "state file"
            problems.append(f"{kind} {name}: {state.problem}")
        state_files.append(state)
    return state_files


def _state_timestamps(state_files: list[StateFile]) -> dict[str, float]:
    # The default "checkpoint" file comes first and wins when two state files time one prefix.
    timestamps: dict[str, float] = {}
    for state in reversed(state_files):
        timestamps.update(state.timestamps)
    return timestamps


def _meta_sources(
    indexes: Mapping[str, FileInfo], metas: Mapping[str, FileInfo], names: Mapping[str, tuple[str, int | None]]
) -> dict[str, str]:
    """prefix -> the prefix whose ``.meta`` it restores with, for every checkpoint that has one.

    Its own ``.meta`` when present; else the newest earlier step of the same family with one
    (the seed's ``write_meta_graph=False`` pattern). Orphaned ``.meta`` files count: retention
    keeps them alive precisely so that later checkpoints can still be restored.
    """
    by_family: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for prefix in metas:
        family, step = names[prefix]
        if step is not None:
            by_family[family].append((step, prefix))
    for steps in by_family.values():
        steps.sort()
    sources = {}
    for prefix in indexes:
        if prefix in metas:
            sources[prefix] = prefix
            continue
        family, step = names[prefix]
        candidates = by_family.get(family) if step is not None else None
        if candidates:
            i = bisect.bisect_left(candidates, (step, ""))
            if i > 0:
                sources[prefix] = candidates[i - 1][1]
    return sources


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
    reader: _IndexReader,
    *,
    v1: bool = False,
) -> DiscoveredCheckpoint:
    digest = _digest(files)
    cached = _cached_outcome(known_fingerprint, digest)
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
        except _UnreadableIndex as exc:
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
        expected = _index_shard_count(_base(directory) + prefix + ".index")
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


def _index_shard_count(index_path: str) -> int | None:
    """``num_shards`` from an ``.index`` file's header, or None if it cannot be seen cheaply.

    Only needed when no data file is left to tell the count. The index is an uncompressed table
    whose first entry, at offset 0, has the empty key and the ``BundleHeaderProto`` as its value:
    bytes ``00 00 LEN`` (shared key bytes, new key bytes, value length; varints), then the proto,
    whose field 1 (tag ``08``) is ``num_shards``.
    """
    try:
        if storage.is_url(index_path):
            head = storage.storage_for(index_path).read_range(index_path, 0, 64)
        else:
            with open(index_path, "rb") as handle:
                head = handle.read(64)
    except OSError:
        return None
    if len(head) < 5 or head[0] != 0 or head[1] != 0 or head[2] >= 0x80 or head[3] != 0x08:
        return None
    count, shift = 0, 0
    for byte in head[4 : 3 + head[2]]:
        count |= (byte & 0x7F) << shift
        if byte < 0x80:
            return count if count > 0 else None
        shift += 7
    return None


def _digest(files: list[FileInfo]) -> str:
    if files and files[0].etag:
        # Objects in a bucket: the ETag too (a local file's digest stays what it always was).
        text = "\n".join([f"{info.name}\t{info.size}\t{info.mtime_ns}\t{info.etag}" for info in files])
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    if len(files) == 2:  # the usual index and one data file: the same text, built faster
        a, b = files
        text = f"{a.name}\t{a.size}\t{a.mtime_ns}\n{b.name}\t{b.size}\t{b.mtime_ns}"
    else:
        text = "\n".join([f"{info.name}\t{info.size}\t{info.mtime_ns}" for info in files])
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def _cached_outcome(known_fingerprint: str | None, digest: str) -> str | None:
    """The format recorded in a previous fingerprint for exactly these files, else None."""
    if not known_fingerprint:
        return None
    fmt, _, known_digest = known_fingerprint.rpartition(":")
    if known_digest == digest and fmt in (TF1, TF1_V1, TF2, UNKNOWN_FORMAT):
        return fmt
    return None


class _UnreadableIndex(Exception):
    def __init__(self, message: str, *, corrupt: bool):
        super().__init__(message)
        self.corrupt = corrupt  # False: the read failed, but not because of the file's bytes


class _IndexReader:
    """Reads variable names, shapes and dtypes from ``.index`` files, importing TensorFlow lazily.

    ``CheckpointReader`` builds its maps from the index (a table of per-tensor entries holding
    dtype, shape, shard, offset, checksum); the data files are only opened by ``get_tensor``. So a
    checkpoint with a missing data shard still lists its variables.
    """

    def __init__(self) -> None:
        self._open = None
        # Index objects fetched from a bucket ahead of reading (URL -> bytes, or why not), and the
        # private directory where each is put for TensorFlow's reader, which reads files only.
        self._fetched: dict[str, Future] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._copies = 0
        self._open_bytes = False
        self._raw_dtypes = False
        self._dtype_facts: dict[object, tuple[str, int]] = {}
        self._as_dtype = None
        # Checkpoints of one model have the same variables: one list object for all of them (less
        # memory, and callers can recognise equal lists by identity, e.g. to encode them once).
        self._lists: dict[tuple, list[VariableInfo]] = {}

    def load(self) -> None:
        """Import TensorFlow now (it is otherwise imported by the first ``read``)."""
        if self._open is not None:
            return
        from persistence.tfruntime import import_tensorflow

        tf = import_tensorflow()

        # NewCheckpointReader is this class called with the path's UTF-8 bytes, plus a translation
        # of RuntimeError into OpError with the same message (all we keep). Calling it directly
        # saves a tenth of the reading time; fall back to the public call if it goes away.
        try:
            from tensorflow.python.util._pywrap_checkpoint_reader import CheckpointReader

            self._open, self._open_bytes = CheckpointReader, True
        except ImportError:
            self._open, self._open_bytes = tf.compat.v1.train.NewCheckpointReader, False
        self._as_dtype = tf.dtypes.as_dtype
        # The public get_variable_to_dtype_map() wraps every enum in a new DType object; on
        # 10,000 one-variable checkpoints that is a third of the reading time. The enum map
        # underneath it has existed since TF 2.2; fall back to the public call if it goes away.
        try:
            from tensorflow.python.training import py_checkpoint_reader

            self._raw_dtypes = hasattr(py_checkpoint_reader.CheckpointReader, "_GetVariableToDataTypeMap")
        except ImportError:
            self._raw_dtypes = False

    def prefetch(self, index_urls: list[str]) -> None:
        """Start fetching these ``.index`` objects (those not on their way already), concurrently,
        for the ``read`` calls that follow."""
        wanted = [url for url in index_urls if url not in self._fetched]
        if wanted:
            future = storage.storage_for(wanted[0]).read_many_soon(wanted)
            self._fetched.update(dict.fromkeys(wanted, future))

    def _local_copy(self, path_prefix: str) -> str:
        """A local file prefix holding the object's ``.index`` (only the index: listing variables
        never opens data files)."""
        url = path_prefix + ".index"
        pending = self._fetched.pop(url, None)
        data = pending.result()[url] if pending is not None else None
        if data is None:
            try:
                data = storage.storage_for(url).read_bytes(url)
            except OSError as exc:
                data = exc
        if isinstance(data, Exception):
            # The object could not be fetched: nothing is known about its bytes.
            raise _UnreadableIndex(str(data), corrupt=False)
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="index-copy-")
        # A new name each time, removed after reading: truncating one file over and over costs a
        # flush per write on ext4 (measured: 1.3 ms against 0.05 ms).
        self._copies += 1
        local = os.path.join(self._scratch.name, f"copy-{self._copies}")
        with open(local + ".index", "wb") as handle:
            handle.write(data)
        return local

    def read(self, path_prefix: str) -> tuple[str, list[VariableInfo]]:
        if self._open is None:
            self.load()
        if storage.is_url(path_prefix):
            local = self._local_copy(path_prefix)
            try:
                return self._read(local)
            except _UnreadableIndex as exc:
                # Name the object, not the private copy, in what is recorded.
                raise _UnreadableIndex(str(exc).replace(local, path_prefix), corrupt=exc.corrupt) from None
            finally:
                os.unlink(local + ".index")
        return self._read(path_prefix)

    def _read(self, path_prefix: str) -> tuple[str, list[VariableInfo]]:
        try:
            reader = self._open(path_prefix.encode("utf-8") if self._open_bytes else path_prefix)
            shapes = reader.get_variable_to_shape_map()
            if self._raw_dtypes:
                dtypes = reader._GetVariableToDataTypeMap()  # noqa: SLF001 - see load
            else:
                dtypes = reader.get_variable_to_dtype_map()
        except Exception as exc:  # TensorFlow raises OpError subclasses, or ValueError for bad bytes
            raise _UnreadableIndex(_reader_message(exc), corrupt=damage.classify(exc).corrupt) from exc
        fmt = TF2 if OBJECT_GRAPH_KEY in shapes else TF1
        names = sorted(shapes)
        if fmt == TF2:
            names.remove(OBJECT_GRAPH_KEY)
        key = tuple([(name, tuple(shapes[name]), dtypes[name]) for name in names])
        variables = self._lists.get(key)
        if variables is None:
            variables = self._lists[key] = [self._variable(name, shape, dtype) for name, shape, dtype in key]
        return fmt, variables

    def _variable(self, name: str, shape: tuple[int, ...], dtype: object) -> VariableInfo:
        fact = self._dtype_facts.get(dtype)
        if fact is None:
            fact = self._dtype_facts[dtype] = self._facts(dtype)
        count = 1
        for dim in shape:
            count *= dim
        return VariableInfo(name, shape, fact[0], count * fact[1])

    def _facts(self, dtype: object) -> tuple[str, int]:
        dtype = self._as_dtype(dtype)
        # Strings, resources and variants have no fixed size per element.
        size = 0 if dtype.name in ("string", "resource", "variant") else dtype.size
        return dtype.name, size


def _reader_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(message.split())


def describe_checkpoint(directory: str, prefix: str, *, meta_source: str | None = None) -> DiscoveredCheckpoint:
    """Describe one checkpoint exactly as :func:`scan_directory` would, without listing the directory.

    For a writer that knows what it just wrote (a save job recording each checkpoint the moment
    the Saver returns): a few ``stat`` calls and one ``.index`` read, whatever the directory's
    size. ``meta_source`` is the prefix whose ``.meta`` restores this one when the caller knows it
    (its own ``.meta`` wins). The fingerprint matches a later scan's, so that scan skips it.
    Raises ``FileNotFoundError`` when there is no ``PREFIX.index``.
    """
    import glob

    def info(name: str) -> FileInfo:
        stat = os.stat(os.path.join(directory, name))
        return FileInfo(name, stat.st_size, stat.st_mtime_ns)

    index = info(prefix + ".index")
    shards = []
    for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + ".data-*-of-*")):
        name = os.path.basename(path)
        match = _DATA_FILE.fullmatch(name)
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
    return _describe(os.path.join(directory, ""), prefix, _split_step(prefix)[1], index, files,
                     meta is not None, problems, None, prefix if meta is not None else meta_source, {},
                     _IndexReader())
