"""Find the checkpoints in one run directory and describe them, without loading any graph.

A checkpoint is identified by its ``PREFIX.index`` file (DESIGN §5). Everything here is plain
Python plus TensorFlow's index reader; no Django, no settings.

Cost model, because scans run over directories with tens of thousands of checkpoints: one
``os.scandir`` pass, at most one ``stat`` per file that belongs to a checkpoint (or may be a state
file), and per checkpoint at most one open of its ``.index`` (never of its data files). A rescan
with ``known`` fingerprints opens no index that has not changed, and does not import TensorFlow
when nothing needs reading.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from persistence.statefile import (
    DEFAULT_STATE_FILE,
    StateFile,
    StateFileError,
    could_be_state_file,
    order_state_file_names,
    sniff_state_file,
)

__all__ = [
    "CORRUPT", "INCOMPLETE", "PRESENT", "TF1", "TF2", "DiscoveredCheckpoint", "FileInfo", "ScanResult",
    "StateFile", "StateFileError", "VariableInfo", "parse_step", "prefix_family", "scan_directory",
]

PRESENT = "present"
INCOMPLETE = "incomplete"
CORRUPT = "corrupt"

TF1 = "tf1"
TF2 = "tf2"
# ``format`` of a checkpoint whose index could not be read.
UNKNOWN_FORMAT = "unknown"

# The key under which TF2 object-based checkpoints store their object graph: not a variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

_DATA_FILE = re.compile(r"(?P<prefix>.+)\.data-(?P<shard>\d+)-of-(?P<count>\d+)")
_STEP = re.compile(r"(?P<family>.*)-(?P<step>\d+)")


@dataclass(frozen=True)
class FileInfo:
    name: str  # base name inside the run directory
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class VariableInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # TensorFlow's name: "float32", "int64", ...
    nbytes: int  # product(shape) * dtype size; 0 for strings / unknown sizes


@dataclass
class DiscoveredCheckpoint:
    prefix: str  # base name, e.g. "model.ckpt-1000" or "ckpt-3"
    step: int | None  # from the trailing "-N"; None without one
    status: str  # PRESENT | INCOMPLETE | CORRUPT
    format: str  # TF1 | TF2 (TF2 when the index holds an object graph); UNKNOWN_FORMAT if unreadable
    files: list[FileInfo]  # index, every data shard found, own .meta when present
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
    format: str | None  # TF1 / TF2 / None when no checkpoints
    checkpoints: list[DiscoveredCheckpoint]
    state_files: list[StateFile]
    problems: list[str]
    # Checkpoint files without a ``.index``: data shards of a half-deleted checkpoint, or a
    # ``.meta`` kept alive as another checkpoint's meta_source after its own checkpoint was pruned.
    orphans: list[FileInfo] = field(default_factory=list)


def parse_step(prefix: str) -> int | None:
    """The global step in a prefix: ``model.ckpt-1000`` → 1000, ``ckpt-3`` → 3, ``model.ckpt`` → None."""
    match = _STEP.fullmatch(prefix)
    return int(match["step"]) if match else None


def prefix_family(prefix: str) -> str:
    """The prefix without its step: the checkpoints one saver wrote (``model.ckpt-1000`` → ``model.ckpt``)."""
    match = _STEP.fullmatch(prefix)
    return match["family"] if match else prefix


@dataclass
class _Files:
    """What the directory listing says about one prefix, before any index is read."""

    index: FileInfo | None = None
    meta: FileInfo | None = None
    shards: list[tuple[int, int, FileInfo]] = field(default_factory=list)  # (shard, count, file)


def scan_directory(directory: str, *, known: Mapping[str, str] | None = None) -> ScanResult:
    """Scan ``directory`` (not recursively).

    ``known`` maps prefix -> fingerprint from a previous scan; a checkpoint whose fingerprint is
    unchanged is returned with ``unchanged=True`` and its index is not read again: its
    ``variables`` are empty (keep the ones recorded before), everything else is filled in.
    Never raises for anything found on disk; what is wrong is reported in ``problems``.
    """
    known = known or {}
    try:
        with os.scandir(directory) as iterator:
            entries = list(iterator)
    except OSError as exc:
        return ScanResult(directory=directory, format=None, checkpoints=[], state_files=[],
                          problems=[f"cannot read directory {directory}: {exc.strerror or exc}"])

    by_prefix: dict[str, _Files] = defaultdict(_Files)
    state_candidates: list[str] = []
    problems: list[str] = []
    for entry in entries:
        name = entry.name
        try:
            if not entry.is_file():
                continue  # e.g. the PREFIX_temp/ directory of a save in progress
            if name.endswith(".index"):
                by_prefix[name[: -len(".index")]].index = _file_info(entry)
            elif name.endswith(".meta"):
                by_prefix[name[: -len(".meta")]].meta = _file_info(entry)
            elif ".data-" in name and (match := _DATA_FILE.fullmatch(name)):
                shard = (int(match["shard"]), int(match["count"]), _file_info(entry))
                by_prefix[match["prefix"]].shards.append(shard)
            elif could_be_state_file(name, entry.stat().st_size):
                state_candidates.append(name)
        except OSError:
            # Deleted between the listing and the stat: a concurrent prune or save. The next
            # scan sees the settled state.
            continue

    state_files = _read_state_files(directory, state_candidates, by_prefix, problems)

    orphans: list[FileInfo] = []
    for files in by_prefix.values():
        if files.index is None:
            orphans += [info for _, _, info in files.shards]
            if files.meta is not None:
                orphans.append(files.meta)
    orphans.sort(key=lambda info: info.name)

    meta_sources = _meta_sources(by_prefix)
    timestamps = _state_timestamps(state_files)
    reader = _IndexReader()
    checkpoints = []
    for prefix, files in by_prefix.items():
        if files.index is None:
            continue
        checkpoints.append(_describe(directory, prefix, files, known.get(prefix), meta_sources,
                                     timestamps, reader))
    checkpoints.sort(key=lambda c: (prefix_family(c.prefix), -1 if c.step is None else c.step, c.prefix))

    return ScanResult(
        directory=directory,
        format=_directory_format(checkpoints),
        checkpoints=checkpoints,
        state_files=state_files,
        problems=problems,
        orphans=orphans,
    )


def _file_info(entry: os.DirEntry[str]) -> FileInfo:
    stat = entry.stat()  # cached on the DirEntry: one system call per file
    return FileInfo(name=entry.name, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _read_state_files(
    directory: str, candidates: list[str], by_prefix: Mapping[str, _Files], problems: list[str]
) -> list[StateFile]:
    state_files = []
    for name in order_state_file_names(candidates):
        state = sniff_state_file(directory, name)
        if state is None:
            continue
        if state.latest is not None:
            named = [state.latest] + [p for p in state.all_prefixes if p != state.latest]
            missing = [p for p in named if p not in by_prefix or by_prefix[p].index is None]
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


def _meta_sources(by_prefix: Mapping[str, _Files]) -> dict[str, str]:
    """prefix -> the prefix whose ``.meta`` it restores with, for every prefix that has one.

    Its own ``.meta`` when present; else the newest earlier step of the same family with one
    (the seed's ``write_meta_graph=False`` pattern). Orphaned ``.meta`` files count: retention
    keeps them alive precisely so that later checkpoints can still be restored.
    """
    metas: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for prefix, files in by_prefix.items():
        if files.meta is not None and (step := parse_step(prefix)) is not None:
            metas[prefix_family(prefix)].append((step, prefix))
    for steps in metas.values():
        steps.sort()
    sources = {}
    for prefix, files in by_prefix.items():
        if files.index is None:
            continue
        if files.meta is not None:
            sources[prefix] = prefix
            continue
        step = parse_step(prefix)
        candidates = metas.get(prefix_family(prefix)) if step is not None else None
        if candidates:
            i = bisect.bisect_left(candidates, (step, ""))
            if i > 0:
                sources[prefix] = candidates[i - 1][1]
    return sources


def _describe(
    directory: str,
    prefix: str,
    files: _Files,
    known_fingerprint: str | None,
    meta_sources: Mapping[str, str],
    timestamps: Mapping[str, float],
    reader: _IndexReader,
) -> DiscoveredCheckpoint:
    index = files.index
    assert index is not None
    problems = _shard_problems(prefix, files.shards)
    shard_files = sorted((info for _, _, info in files.shards), key=lambda info: info.name)
    checkpoint_files = [index, *shard_files] + ([files.meta] if files.meta else [])
    digest = _digest(checkpoint_files)

    cached = _cached_outcome(known_fingerprint, digest)
    unchanged = cached is not None
    variables: list[VariableInfo] = []
    if unchanged:
        fmt = cached
    else:
        try:
            fmt, variables = reader.read(os.path.join(directory, prefix))
        except _UnreadableIndex as exc:
            fmt = UNKNOWN_FORMAT
            problems.insert(0, f"cannot read {index.name}: {exc}")
    if fmt == UNKNOWN_FORMAT:
        status = CORRUPT
        if unchanged:
            problems.insert(0, f"cannot read {index.name} (unchanged since the last scan)")
    else:
        status = INCOMPLETE if problems else PRESENT

    return DiscoveredCheckpoint(
        prefix=prefix,
        step=parse_step(prefix),
        status=status,
        format=fmt,
        files=checkpoint_files,
        has_own_meta=files.meta is not None,
        meta_source=meta_sources.get(prefix),
        size_bytes=sum(info.size for info in checkpoint_files),
        saved_at=timestamps.get(prefix, index.mtime_ns / 1e9),
        variables=variables,
        fingerprint=f"{fmt}:{digest}",
        unchanged=unchanged,
        problems=problems,
    )


def _shard_problems(prefix: str, shards: list[tuple[int, int, FileInfo]]) -> list[str]:
    if not shards:
        return [f"no data file: {prefix}.data-00000-of-NNNNN is missing"]
    counts = {count for _, count, _ in shards}
    # Two shard counts means files of two different saves under one prefix: judge by the larger.
    expected = max(counts)
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


def _digest(files: list[FileInfo]) -> str:
    text = "\n".join(f"{info.name}\t{info.size}\t{info.mtime_ns}" for info in files)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def _cached_outcome(known_fingerprint: str | None, digest: str) -> str | None:
    """The format recorded in a previous fingerprint for exactly these files, else None."""
    if not known_fingerprint:
        return None
    fmt, _, known_digest = known_fingerprint.rpartition(":")
    if known_digest == digest and fmt in (TF1, TF2, UNKNOWN_FORMAT):
        return fmt
    return None


def _directory_format(checkpoints: list[DiscoveredCheckpoint]) -> str | None:
    formats = Counter(c.format for c in checkpoints if c.format in (TF1, TF2))
    if not formats:
        return None
    return formats.most_common(1)[0][0]


class _UnreadableIndex(Exception):
    pass


class _IndexReader:
    """Reads variable names, shapes and dtypes from ``.index`` files, importing TensorFlow lazily.

    ``CheckpointReader`` builds its maps from the index (a table of per-tensor entries holding
    dtype, shape, shard, offset, checksum); the data files are only opened by ``get_tensor``. So a
    checkpoint with a missing data shard still lists its variables.
    """

    def __init__(self) -> None:
        self._new_reader = None
        self._dtype_facts: dict[object, tuple[str, int]] = {}

    def read(self, path_prefix: str) -> tuple[str, list[VariableInfo]]:
        if self._new_reader is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf

            self._new_reader = tf.compat.v1.train.NewCheckpointReader
        try:
            reader = self._new_reader(path_prefix)
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
        except Exception as exc:  # TensorFlow raises OpError subclasses, or ValueError for bad bytes
            raise _UnreadableIndex(_reader_message(exc)) from exc
        fmt = TF2 if OBJECT_GRAPH_KEY in shapes else TF1
        variables = []
        for name in sorted(shapes):
            if name == OBJECT_GRAPH_KEY:
                continue
            dtype_name, item_size = self._facts(dtypes[name])
            shape = tuple(int(d) for d in shapes[name])
            count = 1
            for dim in shape:
                count *= dim
            variables.append(VariableInfo(name=name, shape=shape, dtype=dtype_name, nbytes=count * item_size))
        return fmt, variables

    def _facts(self, dtype: object) -> tuple[str, int]:
        facts = self._dtype_facts.get(dtype)
        if facts is None:
            # Strings, resources and variants have no fixed size: TensorFlow reports 0.
            facts = (dtype.name, dtype.size if dtype.name not in ("string", "resource", "variant") else 0)
            self._dtype_facts[dtype] = facts
        return facts


def _reader_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(message.split())
