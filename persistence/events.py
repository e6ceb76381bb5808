"""Scalar curves from the TensorBoard event files (``events.out.tfevents.*``) any trainer writes.

Estimator writes them beside its checkpoints (and under ``eval/``), Keras' TensorBoard callback
under ``train/`` and ``validation/``, a TF1 script through ``tf.compat.v1.summary.FileWriter``.
A tag is named by the subdirectory its file sits in: ``eval/accuracy``, ``validation/epoch_loss``;
files in the run directory itself keep their tags as written (``loss``).

Records are read with TensorFlow's own record reader (imported lazily: only workers and commands
read event files) from the byte offset where the previous read stopped, so a rescan reads only
what the trainer appended since. A last record still being written is left for the next read,
never reported; a corrupt record is reported and reading goes on after it when its length header
is intact (the record's own CRC says so), else the rest of that file cannot be framed and waits.

Curves are packed as little-endian int64 steps and float64 values; ``downsample`` thins one to
a bounded number of points for a chart and ``attach`` finds each checkpoint's value by step. All
of that uses numpy only (no TensorFlow), so the web process can unpack and chart curves.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import files

EVENT_FILE_MARK = "events.out.tfevents."
# Estimator and Keras write one level down (eval/, train/, validation/); a few more levels cover
# trainers that nest them (e.g. logs/fold-1/validation). Deeper trees are someone else's data.
MAX_DEPTH = 3
# TFRecord framing, as TensorFlow's record writer lays it out: an 8-byte length and its 4-byte
# masked CRC32C, the data, then the data's 4-byte masked CRC32C. Only used to decide what to do
# after the reader refused a record (see ``_after_refusal``); the reading itself is TensorFlow's.
_HEADER, _FOOTER = 12, 4
SCALARS_PLUGIN = "scalars"
_NOT_DIRECTORIES = (".index", ".meta", ".pb", ".tmp", ".json", ".txt", ".h5", ".keras", "checkpoint")
_DATA_CLASS_SCALAR = 1  # summary_pb2.DataClass.DATA_CLASS_SCALAR

STEP_DTYPE, VALUE_DTYPE = np.dtype("<i8"), np.dtype("<f8")


@dataclass
class EventFileState:
    """Where reading one event file stopped, and what it must remember to go on from there.

    TF2 writers put a tag's summary metadata (which plugin its tensors are for) only in the first
    event of that tag, so the plugins seen so far are part of the state, like the offset.
    """

    offset: int = 0
    plugins: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stuck: bool = False  # a corrupt length header: the rest of the file cannot be framed


@dataclass(frozen=True)
class EventFileRef:
    path: str  # relative to the run directory, "/"-separated
    size: int
    etag: str = ""  # an object in a bucket: its ETag (GCS: generation) from the listing

    @property
    def tag_prefix(self) -> str:
        folder = os.path.dirname(self.path)
        return f"{folder}/" if folder else ""


@dataclass
class EventRead:
    """What one read of one file found: the new state and the new points per (prefixed) tag."""

    state: EventFileState
    points: dict[str, tuple[array, array]]
    records: int = 0
    pending: bool = False  # the last record is still being written: read again later
    restarted: bool = False  # the file was shorter than the offset (rewritten): read from the start


def find_event_files(
    directory: str, *, max_depth: int = MAX_DEPTH, only: Iterable[str] | None = None
) -> list[EventFileRef]:
    """Event files in ``directory`` and its subdirectories, in the order they were written.

    ``only``: names in ``directory`` to look at instead of listing it (subdirectories are still
    listed): for a directory whose entries did not change since event files were last looked
    for (``discovery.directory_stamp``), the names those files were found under. A large run's
    directory then is not listed on every rescan.
    Symbolic links to directories are not followed; files are checked against the roots when
    they are read (``read_event_file``). A subdirectory that cannot be listed is skipped.
    """
    found: list[EventFileRef] = []

    def walk(folder: str, rel: str, depth: int, names: Iterable[str] | None = None) -> None:
        if names is None:
            try:
                names = os.listdir(folder)
            except OSError:
                return
        # A run directory holds thousands of checkpoint files: names alone (no DirEntry, no stat)
        # rule them out, so that a rescan of a large run stays cheap.
        deeper = depth < max_depth
        for name in names:
            if name.startswith(EVENT_FILE_MARK):
                try:
                    found.append(EventFileRef(f"{rel}{name}", os.stat(os.path.join(folder, name)).st_size))
                except OSError:  # gone since it was listed
                    pass
            elif deeper and could_hold_event_files(name):
                path = os.path.join(folder, name)
                try:
                    if stat.S_ISDIR(os.lstat(path).st_mode):  # lstat: a link to a directory is not followed
                        walk(path, f"{rel}{name}/", depth + 1)
                except OSError:
                    pass

    walk(directory, "", 0, None if only is None else sorted(set(only)))
    # Writers name files events.out.tfevents.<seconds>.<host>...: by name is by start time, so a
    # trainer restarted at an earlier step overrides the older file's points (``merge``).
    found.sort(key=lambda ref: (os.path.dirname(ref.path), os.path.basename(ref.path)))
    return found


def could_hold_event_files(name: str) -> bool:
    """Whether an entry named ``name`` may be a folder of event files: names alone rule out the
    thousands of checkpoint files of a run directory, without a stat or a request each."""
    return bool(name) and not name.endswith(_NOT_DIRECTORIES) and ".data-" not in name and name[0] != "."


def read_event_file(
    directory: str, ref: EventFileRef, state: EventFileState, *, roots: Iterable[str | os.PathLike[str]]
) -> EventRead:
    """Read the scalar summaries appended to one event file since ``state``.

    Imports TensorFlow. Raises ``files.UnsafeFile`` for a file that is not a regular file inside
    ``roots``, ``OSError`` when it cannot be opened; never for what is inside it.
    """
    path = os.path.join(directory, ref.path)
    files.check_regular_inside(path, roots)
    size = os.stat(path).st_size
    restarted = False
    if size < state.offset:
        state, restarted = EventFileState(), True
    if size == state.offset:
        return EventRead(state, {}, restarted=restarted)
    read = read_records(path, ref, state)
    read.restarted = restarted
    return read


def read_records(local_path: str, ref: EventFileRef, state: EventFileState, *, base: int = 0) -> EventRead:
    """Read the records of ``ref`` from ``state.offset`` on, out of ``local_path``: the file itself
    (``base`` 0), or a local copy of its bytes from ``base`` on (an object in a bucket, fetched
    from where the last read stopped). Offsets in the state and in problems are the file's own.
    Imports TensorFlow."""
    path = local_path
    from google.protobuf.message import DecodeError
    from tensorflow.core.util import event_pb2
    from tensorflow.python.framework import errors
    from tensorflow.python.lib.io import tf_record

    prefix = ref.tag_prefix
    plugins = dict(state.plugins)
    problems = list(state.problems)
    offset, records, pending = state.offset - base, 0, False
    points: dict[str, tuple[array, array]] = {}
    appenders: dict[str, tuple] = {}  # raw tag -> (steps.append, values.append)
    parse = event_pb2.Event.FromString
    unpack_float = struct.Struct("<f").unpack
    try:
        reader = tf_record.tf_record_random_reader(path)
    except errors.OpError as exc:  # permissions, I/O: what TensorFlow raises for OSError
        raise OSError(exc.message) from None
    retried_at = -1
    try:
        while True:
            try:
                record, end = reader.read(offset)
            except IndexError:
                # The end of the file, or (TensorFlow says "out of range" for it too) a length
                # header not completely written yet: that record is read next time.
                pending = offset < os.stat(path).st_size
                break
            except errors.DataLossError:
                verdict, next_offset = _after_refusal(path, offset, tf_record.tf_record_random_reader)
                if verdict == "retry" and retried_at != offset:
                    # Completed since the reader looked: read it with a reader that has not
                    # buffered the short tail.
                    retried_at = offset
                    reader.close()
                    reader = tf_record.tf_record_random_reader(path)
                    continue
                if verdict in ("pending", "retry"):
                    pending = True
                    break
                note = _problem(ref.path, base + offset, None if next_offset is None else base + next_offset)
                if note not in problems:
                    problems.append(note)
                if next_offset is None:
                    return EventRead(EventFileState(base + offset, plugins, problems, stuck=True), points, records)
                offset = next_offset
                continue
            except errors.OpError as exc:
                raise OSError(exc.message) from None
            offset = end
            records += 1
            try:
                event = parse(record)
            except DecodeError:
                note = f"event file {ref.path}: the record ending at byte {base + end} is not an event; skipped"
                if note not in problems:
                    problems.append(note)
                continue
            values = event.summary.value
            if not values:
                continue
            step = event.step
            for value in values:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = value.simple_value
                elif kind == "tensor":
                    tag = value.tag
                    if value.HasField("metadata"):
                        meta = value.metadata
                        plugin = meta.plugin_data.plugin_name or (
                            SCALARS_PLUGIN if meta.data_class == _DATA_CLASS_SCALAR else ""
                        )
                        if plugin:
                            plugins[tag] = plugin
                    if plugins.get(tag) != SCALARS_PLUGIN:
                        continue
                    tensor = value.tensor
                    content = tensor.tensor_content
                    if tensor.dtype == 1 and len(content) == 4:  # float32, as tf.summary.scalar writes
                        number = unpack_float(content)[0]
                    else:
                        number = _tensor_scalar(tensor)
                        if number is None:
                            continue
                else:
                    continue
                append = appenders.get(value.tag)
                if append is None:
                    series = points.setdefault(prefix + value.tag, (array("q"), array("d")))
                    append = appenders[value.tag] = (series[0].append, series[1].append)
                append[0](step)
                append[1](number)
    finally:
        reader.close()
    return EventRead(EventFileState(base + offset, plugins, problems), points, records, pending)


def _after_refusal(path: str, offset: int, open_reader) -> tuple[str, int | None]:
    """TensorFlow's reader refused the record at ``offset``: is it still being written
    ("pending"), complete now ("retry"), or damaged ("corrupt", with where the next record starts,
    None when the length header itself is damaged and nothing after it can be framed)?
    """
    import google_crc32c

    with open(path, "rb") as handle:
        handle.seek(offset)
        header = handle.read(_HEADER)
        size = os.fstat(handle.fileno()).st_size
    if len(header) < _HEADER:
        return "pending", None
    length, crc = struct.unpack("<QI", header)
    if _masked_crc(google_crc32c.value(header[:8])) != crc:
        return "corrupt", None
    end = offset + _HEADER + length + _FOOTER
    if end > size:
        return "pending", None
    # The record was short when the reader looked and may have been completed since: read again.
    reader = open_reader(path)
    try:
        reader.read(offset)
    except Exception:  # noqa: BLE001 - any refusal of a complete record means it is damaged
        return "corrupt", end
    finally:
        reader.close()
    return "retry", None


def _masked_crc(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _problem(path: str, offset: int, next_offset: int | None) -> str:
    if next_offset is None:
        return (f"event file {path}: the record at byte {offset} has a corrupt length header; "
                "nothing after it can be read")
    return f"event file {path}: the record at byte {offset} is corrupt (checksum mismatch); read on after it"


# DataType enum -> (repeated field, struct format of one element in tensor_content)
_TENSOR_FIELDS = {1: ("float_val", "<f"), 2: ("double_val", "<d"), 19: ("half_val", "<e"),
                  3: ("int_val", "<i"), 9: ("int64_val", "<q")}


def _tensor_scalar(tensor) -> float | None:
    """The number in a scalar ``TensorProto`` (what ``tf.summary.scalar`` writes); None otherwise."""
    for dim in tensor.tensor_shape.dim:
        if dim.size != 1:
            return None
    spec = _TENSOR_FIELDS.get(tensor.dtype)
    if spec is None:
        return None
    name, fmt = spec
    content = tensor.tensor_content
    if content:
        if len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, content)[0])
    repeated = getattr(tensor, name)
    if not repeated:
        return None
    if name == "half_val":  # the bits of a float16, stored in an int32
        return float(struct.unpack("<e", struct.pack("<H", repeated[0] & 0xFFFF))[0])
    return float(repeated[0])


# --- packed curves --------------------------------------------------------------------------


def pack(steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray) -> tuple[bytes, bytes]:
    return (np.asarray(steps, dtype=STEP_DTYPE).tobytes(), np.asarray(values, dtype=VALUE_DTYPE).tobytes())


def unpack(steps: bytes | memoryview, values: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    return np.frombuffer(steps, dtype=STEP_DTYPE), np.frombuffer(values, dtype=VALUE_DTYPE)


def merge(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One curve from pieces in the order they were written, sorted by step.

    A step logged twice (a trainer restarted from an earlier checkpoint logs those steps again)
    keeps the value written last, as TensorBoard shows the restarted run.
    """
    parts = list(parts)
    if not parts:
        return np.empty(0, STEP_DTYPE), np.empty(0, VALUE_DTYPE)
    steps = np.concatenate([p[0] for p in parts]).astype(STEP_DTYPE, copy=False)
    values = np.concatenate([p[1] for p in parts]).astype(VALUE_DTYPE, copy=False)
    if len(steps) > 1 and not np.all(steps[1:] > steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        last = np.ones(len(steps), dtype=bool)
        last[:-1] = steps[1:] != steps[:-1]
        steps, values = steps[last], values[last]
    return steps, values


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` of a curve sorted by step, keeping its shape: the first and last
    points and, in equal buckets in between, each bucket's lowest and highest value (min/max
    buckets: spikes and dips survive, which an even stride drops). Non-finite values are kept as
    they are (a diverged loss is news) but never chosen as a bucket's extreme."""
    n = len(steps)
    if n <= max_points:
        return steps, values
    buckets = max(1, (max_points - 2) // 2)
    inner = n - 2
    size = -(-inner // buckets)
    buckets = -(-inner // size)
    padded = np.full(buckets * size, np.nan)
    padded[:inner] = values[1:-1]
    padded[~np.isfinite(padded)] = np.nan
    grid = padded.reshape(buckets, size)
    empty = np.all(np.isnan(grid), axis=1)
    grid[empty, 0] = 0.0  # nan-argmin of an all-NaN row raises; the row's first point stands in
    base = np.arange(buckets) * size + 1
    lows = base + np.nanargmin(grid, axis=1)
    highs = base + np.nanargmax(grid, axis=1)
    chosen = np.unique(np.concatenate(([0], lows, highs, [n - 1])))
    chosen = chosen[chosen < n]
    return steps[chosen], values[chosen]


def attach(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], checkpoint_steps: Sequence[int], *, previous: int | None
) -> dict[int, dict[str, tuple[float, int]]]:
    """Each checkpoint's value of each curve: ``{step: {tag: (value, logged_at_step)}}``.

    ``checkpoint_steps`` are the distinct steps of a run's checkpoints from some step on, sorted;
    ``previous`` is the run's checkpoint step just below them (None: the first one is the run's
    first). A checkpoint takes the value logged at its own step, else the one logged at the
    nearest earlier step within its save interval: after the previous checkpoint's step (for the
    first checkpoint, within the gap to the second; a lone checkpoint takes any earlier step).
    Values logged before a checkpoint's interval describe an older model, so none is taken.
    """
    targets = np.asarray(checkpoint_steps, dtype=STEP_DTYPE)
    out: dict[int, dict[str, tuple[float, int]]] = {int(s): {} for s in targets}
    if not len(targets):
        return out
    lower = np.empty(len(targets), dtype=np.float64)  # exclusive bound of each interval
    lower[1:] = targets[:-1]
    if previous is not None:
        lower[0] = previous
    elif len(targets) > 1:
        lower[0] = targets[0] - (targets[1] - targets[0])
    else:
        lower[0] = -math.inf
    for tag, (steps, values) in curves.items():
        if not len(steps):
            continue
        at = np.searchsorted(steps, targets, side="right") - 1
        ok = at >= 0
        found_steps = np.where(ok, steps[np.clip(at, 0, None)], 0)
        ok &= found_steps > lower
        for i in np.flatnonzero(ok):
            value = float(values[at[i]])
            if math.isfinite(value):
                out[int(targets[i])][tag] = (value, int(found_steps[i]))
    return out
