"""The cheap phase of a scan: one pass over a run directory's entries, and the shapes scans return.

A checkpoint is identified by its ``PREFIX.index`` file, or, in TensorFlow's old V1 format
(``Saver(write_version=V1)``), by one table file named exactly ``PREFIX`` with no index. Listing
sorts the entries into indexes, data shards, ``.meta`` files and state files, reads the state
files, and works out everything that needs the whole listing (``meta_source`` links, orphans, the
order of the result). It reads no index and never imports TensorFlow; ``discovery`` describes what
it found. Also here: the fingerprint of a checkpoint's files, which a rescan compares to skip
checkpoints that did not change.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from persistence import storage
from persistence.statefile import StateFile, could_be_state_file, order_state_file_names, sniff_state_file

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

DATA_FILE = re.compile(r"(?P<prefix>.+)\.data-(?P<shard>\d+)-of-(?P<count>\d+)")
_STEP = re.compile(r"(?P<family>.*)-(?P<step>\d+)")
# A V1 checkpoint saved with ``sharded=True``: its prefix is the pattern PREFIX-?????-of-NNNNN.
_V1_SHARD = re.compile(r"(?P<prefix>.+)-(?P<shard>\d{5})-of-(?P<count>\d{5})")



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
    return split_step(prefix)[1]


def prefix_family(prefix: str) -> str:
    """The prefix without its step: the checkpoints one saver wrote (``model.ckpt-1000`` → ``model.ckpt``)."""
    return split_step(prefix)[0]


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


def list_local(directory: str, roots: list[str | os.PathLike[str]]) -> Listing:
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
                    sort_entry(entry, indexes, metas, shards, state_candidates, others)
                except OSError:
                    # Deleted between the listing and the stat: a concurrent prune or save.
                    # The next scan sees the settled state.
                    continue
    except OSError as exc:
        return Listing(directory=directory, prefixes=[], state_files=[], orphans=[], meta_sources={},
                       problems=[f"cannot read directory {directory}: {exc.strerror or exc}"])
    v1, sharded_v1 = _v1_checkpoints(others, indexes, metas)
    return finish_listing(directory, indexes, metas, shards, state_candidates, problems, v1, sharded_v1)


def finish_listing(
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
            orphans.append(file_info(entry))
        except OSError:
            continue  # gone meanwhile: a concurrent prune
    orphans.sort(key=lambda info: info.name)

    names = {prefix: split_step(prefix) for prefix in indexes}
    names.update((prefix, split_step(prefix)) for prefix in metas if prefix not in names)
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


def run_base(directory: str) -> str:
    """The directory with a trailing separator, to which a prefix is appended."""
    return directory.rstrip("/") + "/" if storage.is_url(directory) else os.path.join(directory, "")


def listed_files(
    listing: Listing, prefix: str
) -> tuple[os.DirEntry[str], list[tuple[int, int, os.DirEntry[str]]], os.DirEntry[str] | None]:
    """A checkpoint's entries: index, data shards (by name), own .meta: the order of its ``files``."""
    found = listing.shards.get(prefix, [])
    if len(found) > 1:
        found = sorted(found, key=lambda item: item[2].name)
    return listing.indexes[prefix], found, listing.metas.get(prefix)


def stat_files(
    listing: Listing, prefix: str
) -> tuple[FileInfo, list[tuple[int, int, FileInfo]], FileInfo | None] | None:
    """``listed_files`` stat'ed; files deleted since the listing are left out (None: the index)."""
    index_entry, found, meta_entry = listed_files(listing, prefix)
    try:
        index = file_info(index_entry)
    except OSError:
        return None
    shards = []
    for shard, count, entry in found:
        try:
            shards.append((shard, count, file_info(entry)))
        except OSError:
            continue
    meta = None
    if meta_entry is not None:
        try:
            meta = file_info(meta_entry)
        except OSError:
            pass
    return index, shards, meta


def _link_allowed(path: str, roots: list[str | os.PathLike[str]]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots))


def sort_entry(
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
        # What DATA_FILE would find in the usual name, without the regular expression.
        shards.setdefault(name[: -len(_SINGLE_SHARD)], []).append((0, 1, entry))
    elif name.endswith(".meta"):
        metas[name[:-5]] = entry
    elif ".data-" in name and (match := DATA_FILE.fullmatch(name)):
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
        if name in indexes or (name not in metas and split_step(name)[1] is None):
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


def file_info(entry: os.DirEntry[str] | storage.Entry) -> FileInfo:
    if isinstance(entry, storage.Entry):
        return FileInfo(entry.name, entry.size, entry.mtime_ns, entry.etag)
    # Not entry.stat(), which keeps its result: a listing described again must see the files anew.
    stat = os.stat(entry.path)
    return FileInfo(entry.name, stat.st_size, stat.st_mtime_ns)


def split_step(prefix: str) -> tuple[str, int | None]:
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


def files_digest(files: list[FileInfo]) -> str:
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


def cached_outcome(known_fingerprint: str | None, digest: str) -> str | None:
    """The format recorded in a previous fingerprint for exactly these files, else None."""
    if not known_fingerprint:
        return None
    fmt, _, known_digest = known_fingerprint.rpartition(":")
    if known_digest == digest and fmt in (TF1, TF1_V1, TF2, UNKNOWN_FORMAT):
        return fmt
    return None
