"""Compare checkpoints variable by variable: norms, differences, cosine, NaN/Inf counts.

Works for TF1 (``Saver``) and TF2 (``tf.train.Checkpoint``) bundles alike; TF2's
``_CHECKPOINTABLE_OBJECT_GRAPH`` entry is metadata, not a variable, and is skipped.

Memory. A variable is never held twice over per side, and a LARGE one (more bytes than
``slice_bytes``) is never held whole: it is streamed in slices, so peak memory follows the slice
size, not the checkpoint and not the largest variable. TensorFlow 2.21 offers no way to do that:
``CheckpointReader`` only has ``get_tensor`` (the whole tensor), and ``RestoreV2`` with a
``shape_and_slices`` spec returns the right slice but builds it by reading the *whole* stored
tensor first (``BundleReader::GetSliceValue`` reads the full entry, then copies the intersection),
so N slices cost N full reads and peak memory is still the full variable. A V2 bundle stores a
non-partitioned tensor of a fixed-size dtype as raw host-order bytes at ``(shard, offset, size)``,
recorded in ``PREFIX.index`` (a LevelDB-format table of ``BundleEntryProto``); for large
variables we read that index ourselves (:mod:`persistence.bundle`) and read one slice at a time.
Anything unusual (partitioned variables, strings, a compressed or unreadable index, another byte
order, a V1 checkpoint, sizes that do not add up) falls back to ``reader.get_tensor``.

The direct path checks each tensor's CRC32C as TensorFlow's reader would: every slice extends a
running checksum (``google-crc32c``, the C implementation, a few GB/s), and after the last slice
it is compared with the masked checksum the index records for the tensor. A mismatch raises
:class:`~persistence.errors.CorruptCheckpoint`. Small variables go through ``get_tensor``, which
checks it itself.

Errors. Whatever TensorFlow raises while reading is translated into
:class:`~persistence.errors.CheckpointReadError`, or :class:`~persistence.errors.CorruptCheckpoint`
when :mod:`persistence.damage` finds evidence of bad bytes; TensorFlow's exception is the cause.

Numbers. Sums of squares and dot products accumulate in float64 (float32 sums over hundreds of
millions of elements lose several digits), one block of ``_BLOCK_ELEMENTS`` at a time so no full
float64 copy of a large variable ever exists; within a block numpy sums pairwise (BLAS is avoided
on purpose, see ``_dot``). ``l2_diff`` is the L2 norm of ``B - A`` where both sides hold the same
value (including NaN at the same place, or the same infinity) counting as no difference, so a
checkpoint compared with itself shows zero change even when it holds NaN.
NaN anywhere else propagates into the norms, as numpy would; the ``nan_*``/``inf_*`` counts say why.

``relative_change`` is ``l2_diff / l2_a``. When ``l2_a == 0``: it is ``0.0`` if nothing changed
(``l2_diff == 0``), else ``None`` with the note "A is all zeros" (the ratio is unbounded: e.g. a
zero-initialised bias that has started training; ``l2_diff`` still says by how much it moved).
``cosine`` is ``None`` when either norm is 0 (note "A is all zeros" / "B is all zeros").

Like every ``persistence`` module this imports neither Django nor (at module level) TensorFlow.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numpy as np

from persistence import damage
from persistence.bundle import declared_size_problem, read_index
from persistence.errors import CheckpointReadError, CorruptCheckpoint

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
DEFAULT_SLICE_BYTES = 64 << 20

NOTE_ONLY_A = "only in A"
NOTE_ONLY_B = "only in B"
NOTE_SHAPE_CHANGED = "shape changed"
NOTE_DTYPE_CHANGED = "dtype changed"
NOTE_NOT_NUMERIC = "not numeric"
NOTE_ZERO_A = "A is all zeros"
NOTE_ZERO_B = "B is all zeros"

# Elements converted to float64 at a time: 64 Ki elements = 512 KiB per working array, which keeps
# the three working arrays in L2 cache and the numpy call overhead negligible.
_BLOCK_ELEMENTS = 1 << 16

ProgressCallback = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------------------
# Results


def _json_float(value: float | None) -> float | None:
    # NaN/Inf are not JSON (PostgreSQL's jsonb rejects them); the nan/inf counts carry the news.
    if value is None or not math.isfinite(value):
        return None
    return value


@dataclass
class VariableComparison:
    name: str
    shape_a: tuple[int, ...] | None  # None: absent on that side
    shape_b: tuple[int, ...] | None
    dtype_a: str | None  # TensorFlow's dtype name, "float32", ...
    dtype_b: str | None
    l2_a: float | None  # None when absent or not numeric
    l2_b: float | None
    l2_diff: float | None  # None unless both sides exist, same shape and dtype, numeric
    max_abs_diff: float | None
    relative_change: float | None  # l2_diff / l2_a; see the module docstring for l2_a == 0
    cosine: float | None  # None when a norm is 0
    nan_a: int | None
    nan_b: int | None
    inf_a: int | None
    inf_b: int | None
    note: str | None  # why differences are missing (or why relative/cosine are), else None

    @property
    def changed(self) -> bool:
        """Both sides compared and not identical (NaN in the difference counts as a change)."""
        return self.l2_diff is not None and self.l2_diff != 0.0

    def to_dict(self) -> dict:
        """JSON-safe: shapes as lists, non-finite floats as None."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float):
                value = _json_float(value)
            out[key] = value
        out["changed"] = self.changed
        return out


@dataclass
class Comparison:
    a: str  # prefix path of A
    b: str
    variables: list[VariableComparison]
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "variables": [v.to_dict() for v in self.variables],
            "summary": dict(self.summary),
        }


# --------------------------------------------------------------------------------------------
# Reading: TensorFlow's reader for metadata and small tensors, raw slices for large ones


@dataclass(frozen=True)
class _VarMeta:
    shape: tuple[int, ...]
    dtype: Any  # tf.DType
    dtype_name: str
    numeric: bool
    np_dtype: np.dtype | None  # None when not numeric
    size: int  # number of elements

    @property
    def nbytes(self) -> int:
        return self.size * self.np_dtype.itemsize if self.np_dtype is not None else 0


@dataclass(frozen=True)
class _RawEntry:
    path: str  # data shard
    offset: int
    size: int  # bytes
    crc32c: int  # masked, as the index records it


def _is_numeric(dtype: Any) -> bool:
    # Quantized types (qint8, ...) convert to structured numpy dtypes: no arithmetic on them.
    return bool(
        (dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex)
        and not dtype.is_quantized
    )


class _Source:
    """One checkpoint: TensorFlow's reader plus, lazily, the raw offsets of its tensors."""

    def __init__(self, prefix: str, tf: Any) -> None:
        self.prefix = prefix
        try:
            self.reader = tf.train.load_checkpoint(prefix)
            shapes = self.reader.get_variable_to_shape_map()
            dtypes = self.reader.get_variable_to_dtype_map()
        except Exception as exc:
            raise _read_error(exc, "cannot read checkpoint: {}") from exc
        # Before any get_tensor: TensorFlow allocates a tensor's declared shape before reading it.
        problem = declared_size_problem(prefix)
        if problem is not None:
            raise CheckpointReadError(f"cannot read {prefix}: {problem}")
        self.meta: dict[str, _VarMeta] = {}
        for name, shape in shapes.items():
            if name == OBJECT_GRAPH_KEY:
                continue
            dtype = dtypes[name]
            numeric = _is_numeric(dtype)
            self.meta[name] = _VarMeta(
                shape=tuple(int(d) for d in shape),
                dtype=dtype,
                dtype_name=dtype.name,
                numeric=numeric,
                np_dtype=np.dtype(dtype.as_numpy_dtype) if numeric else None,
                size=math.prod(int(d) for d in shape),
            )
        self._raw: dict[str, _RawEntry] | None = None

    def raw_entry(self, name: str) -> _RawEntry | None:
        if self._raw is None:
            self._raw = _read_raw_entries(self.prefix, self.meta)
        return self._raw.get(name)

    def full(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.reader.get_tensor(name)).reshape(-1)
        except Exception as exc:
            # TensorFlow's reader turns some C++ errors into odd Python types (a truncated shard
            # surfaces as IndexError "Read less bytes than requested"): give callers one type.
            raise _read_error(exc, f"cannot read {name!r} from {self.prefix}: {{}}", str(exc)) from exc


def _read_error(exc: BaseException, template: str, text: str | None = None) -> CheckpointReadError:
    """``exc``, raised by TensorFlow while reading, as our own type: corrupt only on evidence."""
    if text is None:
        text = str(getattr(exc, "message", None) or exc).strip()
    kind = CorruptCheckpoint if damage.classify(exc).corrupt else CheckpointReadError
    return kind(template.format(text).strip())


def _read_raw_entries(prefix: str, meta: Mapping[str, _VarMeta]) -> dict[str, _RawEntry]:
    """Raw (shard, offset, size) of every tensor that can be read as plain bytes; {} on doubt."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    index = read_index(prefix)
    if index is None:
        return {}
    header, entries = index.header, index.entries
    host_little = sys.byteorder == "little"
    if (header.endianness == tensor_bundle_pb2.BundleHeaderProto.LITTLE) != host_little:
        return {}  # TensorFlow byte-swaps these on read; leave that to it
    shard_sizes: dict[int, int] = {}
    out: dict[str, _RawEntry] = {}
    for name, m in meta.items():
        value = entries.get(name)
        if value is None or not m.numeric:
            continue
        try:
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        except Exception:  # a protobuf DecodeError: fall back to TensorFlow
            continue
        dims = tuple(d.size for d in entry.shape.dim)
        if entry.slices or entry.dtype != m.dtype.as_datatype_enum or dims != m.shape:
            continue
        if entry.size != m.nbytes:
            continue
        path = f"{prefix}.data-{entry.shard_id:05d}-of-{header.num_shards:05d}"
        if entry.shard_id not in shard_sizes:
            try:
                shard_sizes[entry.shard_id] = os.path.getsize(path)
            except OSError:
                shard_sizes[entry.shard_id] = -1
        if entry.offset + entry.size > shard_sizes[entry.shard_id]:
            continue  # let TensorFlow raise its own error about the truncated shard
        out[name] = _RawEntry(path=path, offset=entry.offset, size=entry.size, crc32c=entry.crc32c)
    return out


class _Handle:
    """Reads element ranges of one variable of one checkpoint, whole or slice by slice.

    Sliced reads come in order, each range starting where the previous one stopped; the running
    CRC32C of the bytes read so far is checked against the index when the last byte is in.
    """

    def __init__(self, source: _Source, name: str, meta: _VarMeta, sliced: bool) -> None:
        self.source = source
        self.name = name
        self.meta = meta
        self._array: np.ndarray | None = None
        self._entry = source.raw_entry(name) if sliced else None
        self._crc = 0
        self._checked_to = 0  # bytes of the tensor covered by ``_crc``

    def read(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) as a flat, read-only array."""
        if self._entry is None:
            if self._array is None:
                self._array = self.source.full(self.name)
            return self._array[start:stop]
        itemsize = self.meta.np_dtype.itemsize
        nbytes = (stop - start) * itemsize
        # Opened per slice: a step-over-step chain may span more checkpoints than we may hold
        # file descriptors for, and an open() is nothing next to reading a slice. Read as bytes,
        # not into a reused buffer: the checksum library takes only immutable bytes, and a copy
        # of every slice would cost more than the allocation.
        with open(self._entry.path, "rb", buffering=0) as f:
            f.seek(self._entry.offset + start * itemsize)
            data = f.read(nbytes)
            while len(data) < nbytes:
                more = f.read(nbytes - len(data))
                if not more:
                    raise CorruptCheckpoint(
                        f"cannot read {self.name!r} from {self.source.prefix}: {self._entry.path} ends early"
                    )
                data += more
        self._check(start * itemsize, data)
        return np.frombuffer(data, self.meta.np_dtype)

    def _check(self, offset: int, data: bytes) -> None:
        if offset != self._checked_to:
            raise AssertionError(f"slices of {self.name!r} read out of order")
        self._crc = google_crc32c.extend(self._crc, data)
        self._checked_to += len(data)
        if self._checked_to == self._entry.size and masked_crc32c(self._crc) != self._entry.crc32c:
            raise CorruptCheckpoint(
                f"cannot read {self.name!r} from {self.source.prefix}: the data in "
                f"{os.path.basename(self._entry.path)} does not match its checksum (CRC32C); "
                "the checkpoint is corrupt"
            )

    def close(self) -> None:
        self._array = None


def masked_crc32c(crc: int) -> int:
    """``crc`` masked as TensorFlow (and LevelDB) store it: rotated right by 15 bits, plus a constant.

    Masking keeps the checksum of data that itself holds checksums from being trivially related.
    """
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Accumulation


@dataclass
class _SideStats:
    sumsq: float = 0.0
    nan: int = 0
    inf: int = 0


@dataclass
class _PairStats:
    diff_sumsq: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0


class _Workspace:
    """Preallocated float64 (or complex128) working arrays for one block."""

    def __init__(self, complex_: bool) -> None:
        dtype = np.complex128 if complex_ else np.float64
        self.a = np.empty(_BLOCK_ELEMENTS, dtype)
        self.b = np.empty(_BLOCK_ELEMENTS, dtype)
        self.d = np.empty(_BLOCK_ELEMENTS, dtype)
        self.t = np.empty(_BLOCK_ELEMENTS, dtype)
        self.complex = complex_


# Products are summed with numpy's own ufuncs, not BLAS (np.dot/np.vdot): OpenBLAS spreads a
# 64 Ki-element dot over threads, and on a busy 2-core machine (TensorFlow's pool in the same
# process) one such call was measured at 2.3 ms instead of 30 us, making a 1 GB comparison 10x
# slower. ``add.reduce`` on a contiguous array also sums pairwise, which is the more accurate.
def _dot(x: np.ndarray, y: np.ndarray, tmp: np.ndarray) -> float:
    out = tmp[: x.size]
    np.multiply(np.conjugate(x) if x.dtype.kind == "c" else x, y, out=out)
    return float(np.add.reduce(out).real)


def _count_nonfinite(raw: np.ndarray, side: _SideStats) -> None:
    if raw.dtype.kind in "fcV":  # V: ml_dtypes' bfloat16 and friends
        as_float = raw if raw.dtype.kind in "fc" else raw.astype(np.float32)
        side.nan += int(np.count_nonzero(np.isnan(as_float)))
        side.inf += int(np.count_nonzero(np.isinf(as_float)))


def _accumulate_side(raw: np.ndarray, side: _SideStats, ws: _Workspace) -> None:
    for lo in range(0, raw.size, _BLOCK_ELEMENTS):
        block = raw[lo : lo + _BLOCK_ELEMENTS]
        x = ws.a[: block.size]
        np.copyto(x, block, casting="unsafe")
        s = _dot(x, x, ws.t)
        side.sumsq += s
        # A finite sum of squares proves there is no NaN/Inf in the block: skip the count.
        if not math.isfinite(s):
            _count_nonfinite(block, side)


def _accumulate_pair(
    raw_a: np.ndarray,
    raw_b: np.ndarray,
    side_a: _SideStats | None,
    side_b: _SideStats,
    pair: _PairStats,
    ws: _Workspace,
) -> None:
    """Add one slice of A and B; ``side_a`` None when A's own stats were already counted."""
    for lo in range(0, raw_a.size, _BLOCK_ELEMENTS):
        block_a = raw_a[lo : lo + _BLOCK_ELEMENTS]
        block_b = raw_b[lo : lo + _BLOCK_ELEMENTS]
        n = block_a.size
        a, b, d = ws.a[:n], ws.b[:n], ws.d[:n]
        np.copyto(a, block_a, casting="unsafe")
        np.copyto(b, block_b, casting="unsafe")
        if side_a is not None:
            s = _dot(a, a, ws.t)
            side_a.sumsq += s
            if not math.isfinite(s):
                _count_nonfinite(block_a, side_a)
        s = _dot(b, b, ws.t)
        side_b.sumsq += s
        if not math.isfinite(s):
            _count_nonfinite(block_b, side_b)
        with np.errstate(invalid="ignore"):  # inf - inf: handled just below
            np.subtract(b, a, out=d)
        ds = _dot(d, d, ws.t)
        if not math.isfinite(ds):
            # Same NaN or same infinity on both sides is no change (inf - inf would be NaN).
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            d[same] = 0
            ds = _dot(d, d, ws.t)
        pair.diff_sumsq += ds
        pair.dot += _dot(a, b, ws.t)
        if n:
            if ws.complex:
                m = float(np.abs(d).max())
            else:
                m = max(float(d.max()), -float(d.min()))
            # NaN must stick once seen: max() would drop or keep it depending on argument order.
            if math.isnan(m) or not math.isnan(pair.max_abs):
                pair.max_abs = m if math.isnan(m) else max(pair.max_abs, m)


# --------------------------------------------------------------------------------------------
# Streaming one variable through a chain of checkpoints


@dataclass
class _VariableResult:
    sides: list[_SideStats | None]  # per checkpoint; None when absent or not numeric
    pairs: list[_PairStats | None]  # per consecutive pair; None when not comparable
    notes: list[str | None]  # per consecutive pair, why it is not comparable


def _pair_note(ma: _VarMeta | None, mb: _VarMeta | None) -> str | None:
    if ma is None and mb is None:
        return None  # absent on both sides of this pair (step_over_step only)
    if mb is None:
        return NOTE_ONLY_A
    if ma is None:
        return NOTE_ONLY_B
    if ma.shape != mb.shape:
        return NOTE_SHAPE_CHANGED
    if ma.dtype_name != mb.dtype_name:
        return NOTE_DTYPE_CHANGED
    if not ma.numeric:
        return NOTE_NOT_NUMERIC
    return None


def _stream_variable(sources: Sequence[_Source], name: str, slice_bytes: int) -> _VariableResult:
    """Stats of ``name`` in every checkpoint and between consecutive ones, each read once.

    Consecutive checkpoints holding the variable with the same shape and numeric dtype form a
    chain. A chain is walked slice-major: for each element range, every member's slice is read
    once and compared with the previous member's, so two slices are in memory at a time.
    """
    metas = [s.meta.get(name) for s in sources]
    n = len(sources)
    sides: list[_SideStats | None] = [None] * n
    pairs: list[_PairStats | None] = [None] * (n - 1)
    notes = [_pair_note(metas[i], metas[i + 1]) for i in range(n - 1)]

    i = 0
    while i < n:
        if metas[i] is None or not metas[i].numeric:
            i += 1
            continue
        j = i
        while j + 1 < n and notes[j] is None:
            j += 1
        _stream_chain(sources[i : j + 1], name, metas[i], slice_bytes, sides, pairs, i)
        i = j + 1
    return _VariableResult(sides=sides, pairs=pairs, notes=notes)


def _stream_chain(
    chain: Sequence[_Source],
    name: str,
    meta: _VarMeta,
    slice_bytes: int,
    sides: list[_SideStats | None],
    pairs: list[_PairStats | None],
    first: int,
) -> None:
    large = meta.nbytes > slice_bytes
    sliced = large and all(s.raw_entry(name) is not None for s in chain)
    step = max(1, slice_bytes // meta.np_dtype.itemsize) if sliced else max(1, meta.size)
    ws = _Workspace(complex_=meta.np_dtype.kind == "c")
    for k in range(len(chain)):
        sides[first + k] = _SideStats()
    for k in range(len(chain) - 1):
        pairs[first + k] = _PairStats()

    handles: list[_Handle | None] = [None] * len(chain)
    try:
        for start in range(0, max(meta.size, 1), step):
            stop = min(start + step, meta.size)
            # Dropped before the next range is read: two slices in memory at a time, not three.
            prev: np.ndarray | None = None
            cur: np.ndarray | None = None
            for k, source in enumerate(chain):
                if handles[k] is None:
                    handles[k] = _Handle(source, name, meta, sliced)
                cur = handles[k].read(start, stop)
                if len(chain) == 1:
                    _accumulate_side(cur, sides[first], ws)
                elif prev is not None:
                    _accumulate_pair(
                        prev,
                        cur,
                        sides[first + k - 1] if k == 1 else None,
                        sides[first + k],
                        pairs[first + k - 1],
                        ws,
                    )
                if not sliced and k >= 1:
                    # Whole-tensor mode has one range: the previous member is done with.
                    handles[k - 1].close()
                prev = cur
    finally:
        for h in handles:
            if h is not None:
                h.close()


# --------------------------------------------------------------------------------------------
# Public API


def _load_tf() -> Any:
    from persistence.tfruntime import import_tensorflow

    return import_tensorflow()


def _row(name: str, ma: _VarMeta | None, mb: _VarMeta | None, result: _VariableResult) -> VariableComparison:
    side_a, side_b = result.sides
    pair = result.pairs[0]
    note = result.notes[0]
    l2_a = math.sqrt(side_a.sumsq) if side_a else None
    l2_b = math.sqrt(side_b.sumsq) if side_b else None
    l2_diff = max_abs = relative = cosine = None
    if pair is not None:
        l2_diff = math.sqrt(pair.diff_sumsq)
        max_abs = pair.max_abs
        if l2_a == 0:
            relative = 0.0 if l2_diff == 0 else None
            note = NOTE_ZERO_A
        else:
            relative = l2_diff / l2_a
        if l2_b == 0 and l2_a != 0:
            note = NOTE_ZERO_B
        if l2_a != 0 and l2_b != 0:
            cosine = pair.dot / l2_a / l2_b
            if math.isfinite(cosine):
                cosine = min(1.0, max(-1.0, cosine))  # rounding can step just past ±1
    return VariableComparison(
        name=name,
        shape_a=ma.shape if ma else None,
        shape_b=mb.shape if mb else None,
        dtype_a=ma.dtype_name if ma else None,
        dtype_b=mb.dtype_name if mb else None,
        l2_a=l2_a,
        l2_b=l2_b,
        l2_diff=l2_diff,
        max_abs_diff=max_abs,
        relative_change=relative,
        cosine=cosine,
        nan_a=side_a.nan if side_a else None,
        nan_b=side_b.nan if side_b else None,
        inf_a=side_a.inf if side_a else None,
        inf_b=side_b.inf if side_b else None,
        note=note,
    )


def _summary(rows: Sequence[VariableComparison]) -> dict:
    compared = [r for r in rows if r.l2_diff is not None]
    finite_rel = [r for r in compared if r.relative_change is not None and math.isfinite(r.relative_change)]
    top = max(finite_rel, key=lambda r: r.relative_change, default=None)
    diff_sumsq = sum(r.l2_diff**2 for r in compared)
    return {
        "variables": len(rows),
        "compared": len(compared),
        "changed": sum(1 for r in compared if r.changed),
        "only_a": sum(1 for r in rows if r.note == NOTE_ONLY_A),
        "only_b": sum(1 for r in rows if r.note == NOTE_ONLY_B),
        "shape_changed": sum(1 for r in rows if r.note == NOTE_SHAPE_CHANGED),
        "dtype_changed": sum(1 for r in rows if r.note == NOTE_DTYPE_CHANGED),
        "not_numeric": sum(1 for r in rows if r.note == NOTE_NOT_NUMERIC),
        "with_nan_or_inf": sum(1 for r in rows if (r.nan_a or r.nan_b or r.inf_a or r.inf_b)),
        # The L2 norm of the difference over all compared variables taken as one vector.
        "total_l2_diff": _json_float(math.sqrt(diff_sumsq)),
        "max_relative_change": top.relative_change if top else None,
        "max_relative_change_variable": top.name if top else None,
    }


def compare_checkpoints(
    prefix_a: str,
    prefix_b: str,
    *,
    on_progress: ProgressCallback | None = None,
    slice_bytes: int = DEFAULT_SLICE_BYTES,
) -> Comparison:
    """Compare every variable of checkpoint A with checkpoint B (prefix paths).

    Rows are sorted by name. ``on_progress(done, total, name)`` is called after each variable;
    an exception raised from it aborts the comparison (a job's cancel). A checkpoint or tensor
    that cannot be read raises ``CheckpointReadError`` (a prefix that does not exist, with
    TensorFlow's ``NotFoundError`` as its cause); damaged bytes (truncated shard, CRC mismatch
    on either path) raise its subclass ``CorruptCheckpoint``.
    """
    if slice_bytes < 1:
        raise ValueError("slice_bytes must be positive")
    tf = _load_tf()
    sources = [_Source(prefix_a, tf), _Source(prefix_b, tf)]
    names = sorted(set(sources[0].meta) | set(sources[1].meta))
    rows = []
    for done, name in enumerate(names, start=1):
        result = _stream_variable(sources, name, slice_bytes)
        rows.append(_row(name, sources[0].meta.get(name), sources[1].meta.get(name), result))
        if on_progress is not None:
            on_progress(done, len(names), name)
    return Comparison(a=prefix_a, b=prefix_b, variables=rows, summary=_summary(rows))


def step_over_step(
    prefixes: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
    slice_bytes: int = DEFAULT_SLICE_BYTES,
) -> dict:
    """Relative change of every variable between consecutive checkpoints (a heatmap's data).

    Each checkpoint's slice of a variable is read once and compared with the previous
    checkpoint's. Returns a JSON-safe dict::

        {"prefixes": [...], "pairs": [[a, b], ...], "variables": [names],
         "relative_change": {name: [float | None per pair]},
         "l2_diff": {name: [float | None per pair]},
         "notes": {name: [str | None per pair]}}

    A value is None where the pair could not be compared (``notes`` says why, e.g. "only in B")
    or is not finite (NaN/Inf in the tensors).
    """
    if slice_bytes < 1:
        raise ValueError("slice_bytes must be positive")
    prefixes = list(prefixes)
    out: dict[str, Any] = {
        "prefixes": prefixes,
        "pairs": [[prefixes[i], prefixes[i + 1]] for i in range(len(prefixes) - 1)],
        "variables": [],
        "relative_change": {},
        "l2_diff": {},
        "notes": {},
    }
    if len(prefixes) < 2:
        return out
    tf = _load_tf()
    sources = [_Source(p, tf) for p in prefixes]
    names = sorted(set().union(*(s.meta for s in sources)))
    out["variables"] = names
    for done, name in enumerate(names, start=1):
        result = _stream_variable(sources, name, slice_bytes)
        rel, diffs, notes = [], [], []
        for i, pair in enumerate(result.pairs):
            note = result.notes[i]
            if pair is None:
                rel.append(None)
                diffs.append(None)
                notes.append(note)
                continue
            l2_a = math.sqrt(result.sides[i].sumsq)
            l2_diff = math.sqrt(pair.diff_sumsq)
            if l2_a == 0:
                r = 0.0 if l2_diff == 0 else None
                note = NOTE_ZERO_A
            else:
                r = l2_diff / l2_a
            rel.append(_json_float(r))
            diffs.append(_json_float(l2_diff))
            notes.append(note)
        out["relative_change"][name] = rel
        out["l2_diff"][name] = diffs
        out["notes"][name] = notes
        if on_progress is not None:
            on_progress(done, len(names), name)
    return out


def metric_deltas(metrics_a: Mapping[str, Any], metrics_b: Mapping[str, Any]) -> dict:
    """Per metric: ``{"a", "b", "delta" (b - a), "relative" (delta / |a|)}``.

    ``delta`` is None unless both values are real numbers; ``relative`` also when ``a`` is 0.
    """
    out = {}
    for key in sorted(set(metrics_a) | set(metrics_b), key=str):
        va, vb = metrics_a.get(key), metrics_b.get(key)
        delta = relative = None
        if _is_real(va) and _is_real(vb):
            delta = _json_float(float(vb) - float(va))
            if delta is not None and va != 0:
                relative = _json_float(delta / abs(float(va)))
        out[key] = {"a": va, "b": vb, "delta": delta, "relative": relative}
    return out


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
