"""Restore checkpoints: verify every tensor, run a restored graph, partial restore, make latest.

* :func:`verify_checkpoint` reads every tensor. TensorFlow checks each tensor's CRC32C when it
  reads it, so this is what catches a flipped byte in a ``.data`` shard; a corrupt checkpoint is
  a result (status ``corrupt`` with TensorFlow's message), never an exception, because the worker
  that found it must carry on with the next job. A read that failed for another reason
  (permissions, memory, an I/O error or timeout) is ``unreadable``: it says nothing about the
  bytes (see :mod:`persistence.damage`).
* :func:`restore_and_run` is the seed's restore: ``import_meta_graph(PREFIX.meta)`` then
  ``saver.restore``, then tensors looked up by name (``probs:0``). The meta graph may belong to
  another checkpoint (``write_meta_graph=False``). Graphs are programs: unsafe ops are refused
  first (:mod:`persistence.graphsafety`).
* :func:`partial_restore` is the transfer-learning case: a new graph, a subset of its variables
  restored (optionally renamed), the rest initialised.
* :func:`make_latest` rolls a run back by rewriting the state file's pointer atomically.

TensorFlow is imported inside the functions (the web process imports this module for its
dataclasses only).
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from persistence import damage
from persistence.bundle import declared_size_problem
from persistence.graphsafety import check_graph, load_meta_graph_def, node_name

VERIFIED = "verified"
CORRUPT = damage.CORRUPT
INCOMPLETE = "incomplete"
MISSING = "missing"
# Not a checkpoint status: the read failed without evidence of damage; the status stays as it was.
UNREADABLE = damage.UNREADABLE

ProgressCallback = Callable[[float, str], None]  # (percent 0-100, message), as JobContext.progress

_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def _import_tf() -> Any:
    from persistence.tfruntime import import_tensorflow

    return import_tensorflow()


def _report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is not None:
        on_progress(percent, message)


def _finite_or_none(value: float) -> float | None:
    # JSON (and so the Job row) cannot hold NaN/inf; the counts say why the figure is missing.
    return float(value) if math.isfinite(value) else None


# --- verify ----------------------------------------------------------------------------------


@dataclass
class VariableStats:
    name: str
    shape: list[int]
    dtype: str  # TensorFlow's name: "float32", "int64", "string", ...
    nbytes: int
    # Numeric tensors only (None otherwise); computed over finite values, so one NaN does not
    # hide the range of the rest; None when there are no finite values.
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nan_count: int = 0
    inf_count: int = 0


@dataclass
class VerifyResult:
    prefix: str
    status: str  # VERIFIED | CORRUPT | INCOMPLETE | MISSING | UNREADABLE
    message: str  # TensorFlow's error for a corrupt or unreadable checkpoint, else a summary
    variables: list[VariableStats] = field(default_factory=list)
    failed_tensor: str | None = None  # the tensor whose read failed
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == VERIFIED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Elements per pass when computing statistics: bounds the temporaries (float64 copies, masks) to a
# few MB however large the variable, so verifying costs about one tensor of memory.
_CHUNK = 1 << 20


def _stats(name: str, value: Any, dtype_name: str) -> VariableStats:
    array = np.asarray(value)
    nbytes = array.nbytes
    if array.dtype.kind == "O":  # strings come back as an object array of bytes
        nbytes = sum(len(v) for v in array.reshape(-1) if isinstance(v, bytes))
    stats = VariableStats(name=name, shape=list(array.shape), dtype=dtype_name, nbytes=int(nbytes))
    kind = array.dtype.kind
    # bfloat16 / float8 (ml_dtypes) have kind "V" and are widened per chunk; strings and complex
    # numbers get no statistics.
    widen = kind == "b" or (kind == "V" and dtype_name.startswith(("bfloat", "float8")))
    if kind not in "iuf" and not widen:
        return stats

    count, mean, m2 = 0, 0.0, 0.0
    low, high = math.inf, -math.inf
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        if widen:
            chunk = chunk.astype(np.float32)
        if chunk.dtype.kind == "f":
            finite = np.isfinite(chunk)
            if not finite.all():
                nans = int(np.isnan(chunk).sum())
                stats.nan_count += nans
                stats.inf_count += int(chunk.size - finite.sum()) - nans
                chunk = chunk[finite]
        n = chunk.size
        if n == 0:
            continue
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        wide = chunk.astype(np.float64)
        chunk_mean = float(wide.mean())
        chunk_m2 = float(np.square(wide - chunk_mean).sum())
        # Chan et al.'s pairwise combination: stable where a running sum of squares is not.
        total = count + n
        delta = chunk_mean - mean
        mean += delta * n / total
        m2 += chunk_m2 + delta * delta * count * n / total
        count = total
    if count:
        stats.min, stats.max = _finite_or_none(low), _finite_or_none(high)
        stats.mean, stats.std = _finite_or_none(mean), _finite_or_none(math.sqrt(m2 / count))
    return stats


def _missing_shards(prefix: str) -> list[str] | None:
    """Expected data shards that are absent; None when no shard at all is present."""
    present = [path for path in glob.glob(glob.escape(prefix) + ".data-*-of-*") if _SHARD.search(path)]
    if not present:
        return None
    total = int(_SHARD.search(present[0]).group(2))
    names = {os.path.basename(p) for p in present}
    base = os.path.basename(prefix)
    expected = [f"{base}.data-{i:05d}-of-{total:05d}" for i in range(total)]
    return [name for name in expected if name not in names]


def verify_checkpoint(prefix_path: str, *, on_progress: ProgressCallback | None = None) -> VerifyResult:
    """Read every tensor of the checkpoint at ``prefix_path`` and record per-variable statistics.

    Never raises for a damaged checkpoint: status ``corrupt`` (bad CRC, truncated or garbage
    index or data), ``incomplete`` (a data shard is missing) or ``missing`` (no ``.index``).
    A read that fails for any other reason (permission denied, out of memory, an I/O error or
    timeout) is ``unreadable``, with the error as the message: not a verdict on the checkpoint.
    Tensors are read one at a time, so memory is bounded by the largest variable.
    """
    started = time.monotonic()
    prefix = os.fspath(prefix_path)

    def result(status: str, message: str, **kwargs: Any) -> VerifyResult:
        return VerifyResult(prefix=prefix, status=status, message=message,
                            seconds=time.monotonic() - started, **kwargs)

    if not os.path.isfile(prefix + ".index"):
        return result(MISSING, f"no index file {os.path.basename(prefix)}.index")
    missing = _missing_shards(prefix)
    if missing:
        return result(INCOMPLETE, f"missing data shard(s): {', '.join(missing)}")

    tf = _import_tf()
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as exc:  # noqa: BLE001 - judged below: damage, or a read that merely failed
        failure = damage.classify(exc)
        return result(failure.verdict, failure.message)
    if missing is None and shapes:
        return result(INCOMPLETE, "no data shard found")
    # The files disagree with each other, so the checkpoint is corrupt; refusing here is what
    # keeps an index of a few bytes from making TensorFlow allocate gigabytes for one tensor.
    problem = declared_size_problem(prefix)
    if problem is not None:
        return result(CORRUPT, f"the index does not fit its data: {problem}")

    names = sorted(shapes)
    variables: list[VariableStats] = []
    bytes_read = 0
    for i, name in enumerate(names):
        _report(on_progress, 100.0 * i / max(len(names), 1), f"reading {name}")
        try:
            value = reader.get_tensor(name)
            stats = _stats(name, value, dtypes[name].name)
        except Exception as exc:  # noqa: BLE001 - DataLossError, OpError, IndexError (short read), MemoryError, ...
            if _out_of_memory(exc):
                # Our memory limit, not the files: raised so that the sandbox reports the limit,
                # and the checkpoint is not judged at all.
                raise MemoryError(f"reading {name!r}: {_tf_message(exc)}") from None
            failure = damage.classify(exc)
            return result(failure.verdict, failure.message, variables=variables, failed_tensor=name,
                          bytes_read=bytes_read)
        bytes_read += stats.nbytes
        variables.append(stats)
        del value
    _report(on_progress, 100.0, f"verified {len(variables)} tensors")
    return result(VERIFIED, f"read {len(variables)} tensors ({bytes_read} bytes), all checksums match",
                  variables=variables, bytes_read=bytes_read)


class RestoreFailed(RuntimeError):
    """TensorFlow could not restore a checkpoint into its graph, or run it.

    ``failure`` says whether the checkpoint's bytes are bad (``corrupt``) or the attempt failed for
    another reason (``unreadable``: a graph that does not match, permissions, memory, ...), so
    that callers need not know TensorFlow's exception types.
    """

    def __init__(self, failure: damage.ReadFailure):
        super().__init__(failure.message)
        self.failure = failure

    def __reduce__(self):
        # Raised in the sandboxed child and re-raised here: pickled with its failure.
        return (type(self), (self.failure,))


# How a failed allocation surfaces from TensorFlow's checkpoint reader: a ResourceExhaustedError,
# or, when the buffer it could not allocate is then read into, EFAULT ("Bad address").
_OUT_OF_MEMORY_SIGNS = ("Bad address", "bad_alloc", "OOM", "out of memory", "Cannot allocate memory")


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
        return True
    return any(sign in str(exc) for sign in _OUT_OF_MEMORY_SIGNS)


def _tf_message(exc: BaseException) -> str:
    # OpError.message is TensorFlow's own text without the Python-side traceback decoration.
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


# --- feeding ---------------------------------------------------------------------------------


@dataclass
class InputSpec:
    name: str  # placeholder op name, e.g. "x"
    dtype: str  # "float32", ...
    shape: list[int | None] | None  # None dims are unknown; None for an unknown rank


def placeholder_inputs(graph_def: Any) -> list[InputSpec]:
    """The ``Placeholder`` ops of a GraphDef (not ``PlaceholderWithDefault``: those need no feed)."""
    tf = _import_tf()
    specs = []
    for node in graph_def.node:
        if node.op != "Placeholder":
            continue
        # A meta graph may omit the shape attribute (its default: unknown rank). Indexing the attr
        # map would insert an empty entry into the graph we are about to import, so test first.
        if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
            shape = None
        else:
            shape = [d.size if d.size >= 0 else None for d in node.attr["shape"].shape.dim]
        specs.append(InputSpec(name=node.name, dtype=tf.as_dtype(node.attr["dtype"].type).name, shape=shape))
    return specs


def zeros_for(spec: InputSpec) -> np.ndarray:
    """A zero array for a placeholder: unknown dimensions become 1, an unknown rank a scalar."""
    shape = tuple(1 if d is None else d for d in (spec.shape or []))
    if spec.dtype == "string":
        return np.full(shape, b"", dtype=object)
    tf = _import_tf()
    return np.zeros(shape, dtype=tf.as_dtype(spec.dtype).as_numpy_dtype)


def build_feed(inputs: list[InputSpec], feed: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Feed by tensor name: the given arrays, and zeros for every placeholder not given.

    Keys may be ``"x"`` or ``"x:0"`` (or any other feedable tensor).
    """
    arrays = {tensor_name(k): np.asarray(v) for k, v in (feed or {}).items()}
    for spec in inputs:
        arrays.setdefault(spec.name + ":0", zeros_for(spec))
    return arrays


def tensor_name(name: str) -> str:
    """``"probs"`` -> ``"probs:0"``; an explicit output index is kept."""
    _, sep, index = name.rpartition(":")
    return name if sep and index.isdigit() else name + ":0"


@dataclass
class OutputSummary:
    name: str
    shape: list[int]
    dtype: str
    min: float | None
    max: float | None
    mean: float | None
    preview: list[Any]  # up to 10 leading values, for display


def summarize_output(name: str, value: Any) -> OutputSummary:
    array = np.asarray(value)
    numeric = array.dtype.kind in "biuf" and array.size > 0
    as_float = array.astype(np.float64) if numeric else None
    preview = array.reshape(-1)[:10].tolist()
    preview = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in preview]
    return OutputSummary(
        name=name,
        shape=list(array.shape),
        dtype=str(array.dtype),
        min=_finite_or_none(np.nanmin(as_float)) if numeric and not np.isnan(as_float).all() else None,
        max=_finite_or_none(np.nanmax(as_float)) if numeric and not np.isnan(as_float).all() else None,
        mean=_finite_or_none(as_float.mean()) if numeric else None,
        preview=preview,
    )


# --- restore and run -------------------------------------------------------------------------


@dataclass
class RunResult:
    prefix: str
    meta_path: str
    outputs: dict[str, np.ndarray]  # by the names asked for
    summaries: list[OutputSummary]
    inputs: list[InputSpec]  # placeholders of the graph that were fed
    zero_filled: list[str]  # placeholders fed with zeros because no array was given
    unsafe_ops_allowed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (summaries instead of arrays), for a job's result."""
        data = asdict(self)
        data.pop("outputs")
        return data


def _restore_op_name(meta_graph_def: Any) -> list[str]:
    name = meta_graph_def.saver_def.restore_op_name
    return [name] if name else []


def restore_and_run(
    prefix_path: str,
    meta_path: str,
    *,
    feed: Mapping[str, np.ndarray] | None,
    outputs: list[str],
    allow_unsafe: bool = False,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Import ``meta_path`` into a fresh graph, restore ``prefix_path``, run ``outputs`` on ``feed``.

    ``feed`` is by placeholder name; placeholders without an array get zeros (unknown dims -> 1).
    Raises :class:`~persistence.errors.UnsafeGraph` before importing anything when the
    graph has unsafe ops and ``allow_unsafe`` is false, and :class:`UnknownNameError` naming close
    matches for an unknown output or feed name. TensorFlow's errors while restoring or running
    (a corrupt checkpoint, a graph that does not match it) raise :class:`RestoreFailed`; use
    :func:`verify_checkpoint` to classify damage without raising.
    """
    started = time.monotonic()
    _report(on_progress, 5, "reading meta graph")
    meta_graph_def = load_meta_graph_def(meta_path)
    graph_def = meta_graph_def.graph_def
    check_unknown_names(graph_def, outputs, what="output")
    allowed = check_graph(meta_graph_def, fetches=[*outputs, *_restore_op_name(meta_graph_def)],
                          allow_unsafe=allow_unsafe, source=os.path.basename(meta_path))
    check_unknown_names(graph_def, list(feed or {}), what="feed")
    inputs = placeholder_inputs(graph_def)
    feed_arrays = build_feed(inputs, feed)
    given = {node_name(k) for k in (feed or {})}

    tf = _import_tf()
    v1 = tf.compat.v1
    try:
        with tf.Graph().as_default() as graph:
            # Devices are cleared: a checkpoint trained on a GPU machine must run on a CPU worker.
            saver = v1.train.import_meta_graph(meta_graph_def, clear_devices=True)
            with v1.Session(graph=graph) as sess:
                _report(on_progress, 30, "restoring variables")
                if saver is not None:
                    saver.restore(sess, prefix_path)
                _report(on_progress, 70, "running outputs")
                fetches = [graph.get_tensor_by_name(tensor_name(name)) for name in outputs]
                values = sess.run(fetches, feed_dict={graph.get_tensor_by_name(k): v
                                                      for k, v in feed_arrays.items()})
    except (tf.errors.OpError, MemoryError, OSError, IndexError) as exc:
        raise RestoreFailed(damage.classify(exc)) from exc
    _report(on_progress, 100, "done")
    return RunResult(
        prefix=os.fspath(prefix_path),
        meta_path=os.fspath(meta_path),
        outputs=dict(zip(outputs, values, strict=True)),
        summaries=[summarize_output(name, value) for name, value in zip(outputs, values, strict=True)],
        inputs=inputs,
        zero_filled=[spec.name for spec in inputs if spec.name not in given],
        unsafe_ops_allowed=allowed,
        seconds=time.monotonic() - started,
    )


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


class UnknownNameError(ValueError):
    """A node, tensor or variable name that the graph does not have (the message names close ones)."""


def check_unknown_names(graph_def: Any, names: Iterable[str], *, what: str) -> None:
    """Raise :class:`UnknownNameError` for names that are not nodes of ``graph_def``."""
    existing = {node.name for node in graph_def.node}
    unknown = [name for name in names if node_name(name) not in existing]
    if unknown:
        raise UnknownNameError(unknown_names_message(unknown, existing, what=what))


def unknown_names_message(unknown: list[str], existing: Iterable[str], *, what: str) -> str:
    existing = list(existing)
    parts = []
    for name in unknown:
        matches = close_matches(node_name(name), existing)
        hint = f" (closest: {', '.join(matches)})" if matches else " (no similar node names)"
        parts.append(f"{name!r}{hint}")
    return f"unknown {what} node(s) in the graph: {'; '.join(parts)}"


# --- partial restore -------------------------------------------------------------------------


@dataclass
class VariableMismatch:
    graph_name: str
    checkpoint_name: str
    graph_shape: list[int | None]
    checkpoint_shape: list[int]
    graph_dtype: str
    checkpoint_dtype: str


@dataclass
class PartialRestoreResult:
    prefix: str
    restored: dict[str, str]  # graph variable name -> checkpoint name it was restored from
    left_initialised: list[str]  # graph variables that kept their initial values
    missing_in_checkpoint: list[str]  # requested graph variables whose checkpoint name is absent
    shape_mismatch: list[VariableMismatch]  # requested but shape (or dtype) differs: not restored
    saved_prefix: str | None = None  # the warm-start checkpoint written when save_prefix was given

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _variable_name(variable: Any) -> str:
    return variable.op.name


def partial_restore(
    prefix_path: str,
    build_graph: Callable[[], Any],
    *,
    name_map: Mapping[str, str] | None = None,
    variables: list[str] | None = None,
    save_prefix: str | None = None,
) -> PartialRestoreResult:
    """Build a new graph with ``build_graph()`` and restore a subset of its variables.

    ``variables`` (graph variable names; default: every global variable) are the ones to
    restore; ``name_map`` maps a graph variable name to the checkpoint key it is read from (the
    seed's ``Saver(var_list={checkpoint_name: variable})``). Requested variables that are absent
    from the checkpoint or whose shape/dtype differs are reported and left initialised, like
    every variable that was not requested. A corrupt checkpoint raises TensorFlow's error.

    With ``save_prefix`` the new graph's variables (restored + initialised) and its meta graph
    are saved there: a warm-start checkpoint for the new model. The directory's state file is
    not touched (use :func:`make_latest` for that).
    """
    tf = _import_tf()
    v1 = tf.compat.v1
    name_map = dict(name_map or {})
    reader = tf.train.load_checkpoint(prefix_path)
    ckpt_shapes = reader.get_variable_to_shape_map()
    ckpt_dtypes = reader.get_variable_to_dtype_map()

    with tf.Graph().as_default() as graph:
        build_graph()
        all_vars = {_variable_name(v): v for v in v1.global_variables()}
        unknown = [n for n in [*(variables or []), *name_map] if n not in all_vars]
        if unknown:
            raise UnknownNameError(unknown_names_message(unknown, all_vars, what="variable"))
        wanted = list(variables) if variables is not None else list(all_vars)

        var_list: dict[str, Any] = {}
        restored: dict[str, str] = {}
        missing: list[str] = []
        mismatched: list[VariableMismatch] = []
        for gname in wanted:
            variable = all_vars[gname]
            cname = name_map.get(gname, gname)
            if cname not in ckpt_shapes:
                missing.append(gname)
                continue
            graph_shape = variable.shape.as_list()
            graph_dtype = variable.dtype.base_dtype
            if (not variable.shape.is_compatible_with(ckpt_shapes[cname])
                    or graph_dtype != ckpt_dtypes[cname]):
                mismatched.append(VariableMismatch(gname, cname, graph_shape, list(ckpt_shapes[cname]),
                                                   graph_dtype.name, ckpt_dtypes[cname].name))
                continue
            var_list[cname] = variable
            restored[gname] = cname

        rest = [v for name, v in all_vars.items() if name not in restored]
        with v1.Session(graph=graph) as sess:
            sess.run(v1.variables_initializer(rest))
            if var_list:
                v1.train.Saver(var_list=var_list).restore(sess, prefix_path)
            if save_prefix is not None:
                v1.train.Saver().save(sess, save_prefix, write_state=False)
    return PartialRestoreResult(
        prefix=os.fspath(prefix_path),
        restored=restored,
        left_initialised=[name for name in all_vars if name not in restored],
        missing_in_checkpoint=missing,
        shape_mismatch=mismatched,
        saved_prefix=os.fspath(save_prefix) if save_prefix is not None else None,
    )


# --- make latest -----------------------------------------------------------------------------


@dataclass
class MakeLatestResult:
    directory: str
    state_file: str
    latest: str
    previous_latest: str | None
    replaced_problem: str | None = None  # the state file was unreadable and was rewritten


def make_latest(directory: str, prefix: str, *, state_file: str = "checkpoint") -> MakeLatestResult:
    """Point ``directory/state_file``'s ``model_checkpoint_path`` at ``prefix`` (a rollback).

    ``all_model_checkpoint_paths`` keeps its entries and order (``prefix`` is appended when
    absent), timestamps and ``last_preserved_timestamp`` are kept, and the file is replaced
    atomically, so ``tf.train.latest_checkpoint(directory)`` returns the prefix. A missing state
    file is created; an unreadable one is replaced (TensorFlow's own ``Saver`` would overwrite it
    too). Raises ``FileNotFoundError`` when ``prefix`` has no ``.index`` in ``directory``.

    ``directory`` may be a run's ``s3://`` URL: the state object is then replaced only if it still
    has the ETag it was read with (a trainer's save in between is read again and kept, with
    ``prefix`` made latest over it), and created only if there still is none.
    """
    from persistence import storage
    from persistence.statefile import StateFileChanged, prefix_base_name

    base = prefix_base_name(os.fspath(prefix))
    in_bucket = storage.is_url(directory)
    if in_bucket:
        if base is None or ("/" in os.fspath(prefix) and os.fspath(prefix) != f"{directory.rstrip('/')}/{base}"):
            raise FileNotFoundError(f"{prefix} is not a checkpoint in {directory}")
        mtimes = {e.name: e.mtime_ns / 1e9 for e in storage.storage_for(directory).list(directory)}
    else:
        if base is None or (os.path.dirname(os.fspath(prefix))
                            and os.path.realpath(os.path.dirname(os.fspath(prefix))) != os.path.realpath(directory)):
            raise FileNotFoundError(f"{prefix} is not a checkpoint in {directory}")
        mtimes = None
    present = base + ".index" in mtimes if mtimes is not None else os.path.isfile(os.path.join(directory, base + ".index"))
    if not present:
        raise FileNotFoundError(f"no checkpoint {base} in {directory} ({base}.index does not exist)")

    # A local rewrite is one atomic replace, as TensorFlow's own; a bucket's is conditional, and
    # a trainer's save between our read and our write sends us round again.
    for _ in range(5 if in_bucket else 1):
        try:
            return _point_state_file_at(directory, base, state_file, mtimes)
        except StateFileChanged:
            continue
    raise StateFileChanged(f"{state_file} kept changing while it was being rewritten; try again")


def _point_state_file_at(directory: str, base: str, state_file: str,
                         mtimes: dict[str, float] | None) -> MakeLatestResult:
    from persistence.statefile import StateFileError, parse_state_bytes, read_state_version, write_state_file

    problem = None
    all_prefixes: list[str] = []
    timestamps: dict[str, float] = {}
    last_preserved = None
    previous = None
    version = None
    try:
        version = read_state_version(directory, state_file)
    except StateFileError as exc:
        if mtimes is not None:
            # Not a bad state object (that would be replaced) but a failed request: writing
            # blind could replace a state we never saw.
            raise
        problem = str(exc)
    try:
        if version is not None:
            state = parse_state_bytes(version[0], state_file, directory)
            previous = state.latest
            all_prefixes = list(state.all_prefixes)
            timestamps = dict(state.timestamps)
            last_preserved = state.last_preserved_timestamp
    except StateFileError as exc:
        problem = str(exc)
    if base not in all_prefixes:
        all_prefixes.append(base)
    if timestamps:
        # TensorFlow rejects a state whose timestamps do not pair up with its paths: fill the gaps
        # from the index files' mtimes (what discovery uses as saved_at without a timestamp).
        for name in all_prefixes:
            if name in timestamps:
                continue
            if mtimes is not None:
                if name + ".index" in mtimes:
                    timestamps[name] = mtimes[name + ".index"]
                continue
            try:
                timestamps[name] = os.stat(os.path.join(directory, name + ".index")).st_mtime
            except OSError:
                pass
        if any(name not in timestamps for name in all_prefixes):
            timestamps = {}
    conditional = {}
    if mtimes is not None and version is not None:
        conditional = {"unchanged_from": version[0], "if_match": version[1]}
    write_state_file(directory, state_file, latest=base, all_prefixes=all_prefixes,
                     timestamps=timestamps or None, last_preserved_timestamp=last_preserved, **conditional)
    return MakeLatestResult(directory=os.fspath(directory), state_file=state_file, latest=base,
                            previous_latest=previous, replaced_problem=problem)


def partial_restore_with_recipe(prefix_path: str, recipe_path: str, **kwargs: Any) -> PartialRestoreResult:
    """:func:`partial_restore` with the graph of the recipe at ``recipe_path`` (importable by name).

    Takes the recipe's dotted path rather than its ``build_graph`` so that the call can be sent to
    a sandboxed child process.
    """
    from persistence.recipes import load_recipe

    return partial_restore(prefix_path, load_recipe(recipe_path).build_graph, **kwargs)
