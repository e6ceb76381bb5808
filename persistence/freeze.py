"""Freeze a checkpoint into one ``.pb`` (variables as constants) and prove it computes the same thing.

The seed's recipe: ``import_meta_graph`` + ``saver.restore`` + ``convert_variables_to_constants(sess,
graph_def, output_node_names)``, then ``GraphDef.ParseFromString`` + ``import_graph_def`` to serve.
Around those TensorFlow calls this module adds what a deployment pipeline needs:

* refusals with a clear message before any work: missing meta graph, unknown output node (with
  the closest names), unsafe ops (:mod:`persistence.graphsafety`), a result beyond protobuf's 2 GB;
* an atomic write: the ``.pb`` is written to a temporary file beside the target, verified, fsynced
  and only then renamed into place, so a crash or a failed verification leaves nothing at the
  final path;
* verification: the written bytes are read back, imported into a fresh graph and fed the same
  sample as the restored checkpoint; the largest absolute difference is recorded.

Cost matters for large models (a benchmark compares against the bare TensorFlow calls): there is
no pass here that touches tensor bytes except those TensorFlow makes anyway, one SHA-256 of the
serialized bytes and one read-back from the page cache. In particular the 2 GB check is computed
from tensor shapes, because ``GraphDef.ByteSize()`` re-encodes the whole message (measured: slower
than serializing it).
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from persistence.allowed_ops import SAVER_OPS
from persistence.errors import FreezeError
from persistence.files import atomic_writer, read_back
from persistence.graphdefs import (
    FED_CONSTANT_BYTES,
    PROTOBUF_LIMIT_BYTES,
    VARIABLE_OPS,
    convert_session_variables,
    estimate_graph_def_bytes,
    lift_large_constants,
    serialized_chunks,
)
from persistence.graphsafety import node_name
from persistence.restore import (
    InputSpec,
    ProgressCallback,
    placeholder_inputs,
    unknown_names_message,
)
from persistence.sources import restored_tf1, restored_tf2, verification_feed

# A frozen graph is "verified" when every output matches the checkpoint's within this.
VERIFY_TOLERANCE = 1e-6


# --- suggesting output nodes -----------------------------------------------------------------

_NOT_OUTPUT_OPS = frozenset({
    "NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "Variable", "VariableV2", "VarHandleOp",
    "VarIsInitializedOp", "IsVariableInitialized", "ReadVariableOp", "Assign", "AssignAdd", "AssignSub",
    "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ScatterUpdate", "ScatterAdd",
    "Assert", "Print", "PrintV2", "ReportUninitializedVariables",
    # Shape bookkeeping that loss functions leave dangling.
    "Shape", "ShapeN", "Size", "Rank", "BroadcastGradientArgs", "ZerosLike",
}) | SAVER_OPS  # not StringJoin: a text model may output one
_NOT_OUTPUT_OP_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")
# First name component of scopes that hold saving, initialisation and training machinery.
_NOT_OUTPUT_SCOPE = re.compile(
    r"^(save|gradients|init|init_all_tables|report_uninitialized_variables|"
    r"report_uninitialized_resources|global_step|summaries|group_deps)(_\d+)?$"
)
_OUTPUT_LIKE_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "ArgMax", "ArgMin", "TopKV2", "TopK"})
_OUTPUT_LIKE_NAME = re.compile(r"prob|pred|output|logit|score|class|embed|softmax|sigmoid|result", re.I)


def _is_machinery(op: str) -> bool:
    return op in _NOT_OUTPUT_OPS or op.startswith(_NOT_OUTPUT_OP_PREFIXES) or "Summary" in op


def suggest_output_nodes(graph_or_meta: Any) -> list[str]:
    """Likely output node names of a graph: best first.

    Candidates are ops whose outputs nothing consumes, minus save/restore, initialisation,
    training (optimizer scopes, ``gradients/``, ``Apply*``) and summary machinery and
    constants/placeholders/variables. Softmax/sigmoid/argmax-like ops and names such as
    ``probs``, ``predictions`` or ``output`` come first; the rest keep graph order.
    """
    graph_def = graph_or_meta.graph_def if hasattr(graph_or_meta, "meta_info_def") else graph_or_meta
    consumed = {node_name(inp) for node in graph_def.node for inp in node.input}
    # An optimizer's ops live in a scope named after it ("Adam", "train", ...): find the scopes
    # holding Apply* updates and drop everything in them.
    training_scopes = {node.name.split("/", 1)[0] for node in graph_def.node
                       if node.op.startswith(_NOT_OUTPUT_OP_PREFIXES)}
    candidates = []
    for index, node in enumerate(graph_def.node):
        scope = node.name.split("/", 1)[0]
        if (node.name in consumed or _is_machinery(node.op) or _NOT_OUTPUT_SCOPE.match(scope)
                or scope in training_scopes or "/Initializer/" in node.name):
            continue
        last = node.name.rsplit("/", 1)[-1]
        score = (node.op in _OUTPUT_LIKE_OPS) + bool(_OUTPUT_LIKE_NAME.search(last))
        candidates.append((-score, index, node.name))
    return [name for _, _, name in sorted(candidates)]


# --- results ---------------------------------------------------------------------------------


@dataclass
class FreezeResult:
    path: str
    size_bytes: int
    sha256: str
    inputs: list[InputSpec]  # placeholders of the frozen graph
    outputs: list[str]  # output node names of the frozen graph
    node_count: int
    op_histogram: dict[str, int]  # op type -> count, most frequent first
    max_abs_diff: float  # max over outputs of |frozen - checkpoint| on the same input (inf if shapes differ)
    verified: bool  # max_abs_diff <= VERIFY_TOLERANCE
    source_prefix: str = ""
    meta_path: str | None = None  # the meta graph used (TF1)
    output_keys: dict[str, str] = field(default_factory=dict)  # TF2: structured output key -> node name
    zero_filled: list[str] = field(default_factory=list)  # inputs fed zeros for verification
    unsafe_ops_allowed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not np.isfinite(self.max_abs_diff):
            data["max_abs_diff"] = None  # JSON has no inf
        return data


def _import_tf() -> Any:
    from persistence.tfruntime import import_tensorflow

    return import_tensorflow()


def _report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is not None:
        on_progress(percent, message)


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a - b|; NaN matching NaN counts as equal; inf when shapes or non-numbers differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return 0.0 if np.array_equal(a, b) else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.where(a64 == b64, 0.0, np.abs(a64 - b64))
    diff[np.isnan(a64) & np.isnan(b64)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max())


# --- writing and verifying (shared by TF1 and TF2) -------------------------------------------

Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _write_and_verify(
    holder: list[Any],
    output_path: str,
    *,
    output_tensors: list[str],
    feed: dict[str, np.ndarray],
    reference: Reference,
    max_bytes: int,
    on_progress: ProgressCallback | None,
    temp_owner: str | None = None,
) -> dict[str, Any]:
    tf = _import_tf()
    v1 = tf.compat.v1
    # ``holder`` hands over the only reference to the frozen GraphDef, so that it can be freed as
    # soon as it is serialized: the GraphDef, its bytes, the read-back copy and the verification
    # graph would otherwise each hold every weight at once.
    frozen = holder.pop()
    estimate = estimate_graph_def_bytes(frozen)
    if estimate > max_bytes:
        raise FreezeError(
            f"the frozen graph would be about {estimate / 2**30:.2f} GiB, beyond protobuf's limit of "
            f"{max_bytes / 2**30:.2f} GiB for one message: freeze fewer variables "
            "(variables_allowlist/denylist) or export a SavedModel instead"
        )
    histogram = Counter(node.op for node in frozen.node)
    node_count = len(frozen.node)
    with atomic_writer(output_path, owner=temp_owner) as handle:
        _report(on_progress, 65, "writing")
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in serialized_chunks(frozen):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        except Exception as exc:  # noqa: BLE001 - protobuf's encode errors have no common base
            raise FreezeError(f"cannot serialize the frozen graph: {exc}") from exc
        del frozen, chunk
        if size > max_bytes:  # the estimate is close, not exact; nothing is renamed into place
            raise FreezeError(f"the frozen graph is {size} bytes, beyond protobuf's limit of {max_bytes} "
                              "for one message: freeze fewer variables or export a SavedModel instead")
        sha256 = digest.hexdigest()
        handle.flush()
        # Verify what is in the file (read back through the same descriptor, from the page cache)
        # before it is renamed into place: a .pb that cannot be loaded never appears.
        _report(on_progress, 75, "verifying: loading the written .pb")
        loaded = v1.GraphDef()
        loaded.ParseFromString(read_back(handle.fileno(), size))
        constants = lift_large_constants(loaded, FED_CONSTANT_BYTES)
        with tf.Graph().as_default() as graph:
            v1.import_graph_def(loaded, name="")
            del loaded
            # Grappler would spend most of a large freeze here (measured: 14 s of 17 s for a 200 MB
            # graph) optimising, i.e. copying, every constant of a graph we run once. Its rewrites
            # preserve values, and values are what this run checks; the server optimises anyway.
            config = v1.ConfigProto()
            config.graph_options.rewrite_options.disable_meta_optimizer = True
            # The classic graph optimizer's constant folding and CSE copy constants too (measured:
            # one more checkpoint-sized copy at the peak) for the same value-preserving rewrites.
            config.graph_options.optimizer_options.opt_level = v1.OptimizerOptions.L0
            with v1.Session(graph=graph, config=config) as sess:
                _report(on_progress, 85, "verifying: running the frozen graph")
                frozen_values = sess.run(output_tensors, feed_dict={**constants, **feed})
            del constants
        _report(on_progress, 90, "verifying: running the checkpoint")
        reference_values = reference(feed)
        diff = max((max_abs_diff(a, b) for a, b in zip(frozen_values, reference_values, strict=True)),
                   default=0.0)
    _report(on_progress, 100, "frozen and verified" if diff <= VERIFY_TOLERANCE else "frozen; outputs differ")
    return {
        "path": os.fspath(output_path),
        "size_bytes": size,
        "sha256": sha256,
        "node_count": node_count,
        "op_histogram": dict(histogram.most_common()),
        "max_abs_diff": diff,
        "verified": bool(diff <= VERIFY_TOLERANCE),
    }


# --- TF1: checkpoint + meta graph ------------------------------------------------------------

def freeze_checkpoint(
    prefix_path: str,
    meta_path: str,
    output_path: str,
    *,
    outputs: list[str],
    clear_devices: bool = True,
    variables_allowlist: list[str] | None = None,
    variables_denylist: list[str] | None = None,
    sample_feed: Mapping[str, np.ndarray] | None = None,
    allow_unsafe: bool = False,
    max_bytes: int = PROTOBUF_LIMIT_BYTES,
    on_progress: ProgressCallback | None = None,
    temp_owner: str | None = None,
) -> FreezeResult:
    """Freeze the TF1 checkpoint ``prefix_path`` with the graph in ``meta_path`` into ``output_path``.

    ``meta_path`` may be another checkpoint's ``.meta`` (``write_meta_graph=False``). ``outputs``
    are node names (``"probs"``; ``"probs:0"`` is accepted). ``sample_feed`` (by placeholder name)
    is what both graphs are fed for verification; missing placeholders get zeros.
    Raises :class:`FreezeError` (or :class:`~persistence.errors.UnsafeGraph`) before
    writing anything; TensorFlow's errors from restoring a corrupt checkpoint propagate.
    ``temp_owner`` names this writer in the temporary file's name (see ``files.atomic_writer``).
    """
    started = time.monotonic()
    tf = _import_tf()
    from tensorflow.python.util import deprecation

    v1 = tf.compat.v1
    with restored_tf1(prefix_path, meta_path, outputs=outputs, sample_feed=sample_feed, allow_unsafe=allow_unsafe,
                      clear_devices=clear_devices, on_progress=on_progress) as restored:
        graph, sess = restored.graph, restored.session
        output_nodes, output_tensors = restored.output_nodes, restored.output_tensors
        graph_def = graph.as_graph_def()
        with deprecation.silence():
            inputs = placeholder_inputs(v1.graph_util.extract_sub_graph(graph_def, output_nodes))
        feed, zero_filled = verification_feed(inputs, sample_feed)
        # The checkpoint's answer is computed first: the conversion empties each variable once
        # it is a constant, so that the restored variables and the frozen graph never both
        # hold every weight.
        try:
            reference_values = sess.run(output_tensors, feed_dict=feed)
        except (tf.errors.OpError, ValueError) as exc:
            raise FreezeError(f"verification run failed, nothing was written: {_message(exc)}") from exc
        _report(on_progress, 35, "converting variables to constants")
        frozen = convert_session_variables(
            sess, graph_def, output_nodes,
            allowlist=variables_allowlist, denylist=variables_denylist, release=True,
        )
        kept = [node.name for node in frozen.node if node.op in VARIABLE_OPS]
        if kept:
            raise FreezeError(
                f"the outputs need variables that the allowlist/denylist kept from being frozen: "
                f"{', '.join(kept)}; a .pb has no checkpoint to restore them from"
            )
        allowed = restored.unsafe_ops_allowed
    del graph, sess, restored
    gc.collect()
    holder = [frozen]
    del frozen

    def reference(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return reference_values

    try:
        written = _write_and_verify(holder, output_path, output_tensors=output_tensors, feed=feed,
                                    reference=reference, max_bytes=max_bytes, on_progress=on_progress,
                                    temp_owner=temp_owner)
    except (tf.errors.OpError, ValueError) as exc:
        raise FreezeError(f"verification run failed, nothing was written: {_message(exc)}") from exc
    return FreezeResult(
        **written,
        inputs=inputs,
        outputs=output_nodes,
        source_prefix=os.fspath(prefix_path),
        meta_path=os.fspath(meta_path),
        zero_filled=zero_filled,
        unsafe_ops_allowed=allowed,
        seconds=time.monotonic() - started,
    )


# --- TF2: object checkpoint + a module's tf.function -----------------------------------------


def freeze_tf2(
    prefix_path: str,
    output_path: str,
    *,
    build_module: Callable[[], Any],
    checkpoint_key: str = "model",
    function_name: str = "serve",
    input_signature: Sequence[Any] | None = None,
    sample_feed: Mapping[str, np.ndarray] | None = None,
    max_bytes: int = PROTOBUF_LIMIT_BYTES,
    on_progress: ProgressCallback | None = None,
    temp_owner: str | None = None,
) -> FreezeResult:
    """Freeze a TF2 object checkpoint through the module a recipe builds.

    ``build_module()`` returns a fresh ``tf.Module`` (e.g. ``recipe.build_tf2_module``); the
    checkpoint is read as ``tf.train.Checkpoint(**{checkpoint_key: module})``, the way it was
    written (``Checkpoint(model=module)``). ``module.<function_name>`` is traced with its own
    ``input_signature`` (or the one given), its variables are converted to constants
    (``convert_variables_to_constants_v2``), and the result is written and verified like
    :func:`freeze_checkpoint`, against the restored function run eagerly. Inputs are named after
    the ``TensorSpec`` names; ``output_keys`` maps a dict output's keys to the frozen node names.
    The module is our own code, so its graph is not screened for unsafe ops.
    """
    started = time.monotonic()
    tf = _import_tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.util import nest  # has the path-aware flatten that tf.nest lacks

    _module, concrete = restored_tf2(prefix_path, build_module, checkpoint_key=checkpoint_key,
                                     function_name=function_name, input_signature=input_signature,
                                     on_progress=on_progress)
    _report(on_progress, 35, "converting variables to constants")
    frozen_function = convert_variables_to_constants_v2(concrete)
    frozen = frozen_function.graph.as_graph_def()
    input_names = [t.op.name for t in frozen_function.inputs]
    output_tensors = [t.name for t in frozen_function.outputs]
    flat_outputs = nest.flatten_with_joined_string_paths(concrete.structured_outputs)
    output_keys = {path: node_name(t.name) for (path, _), t
                   in zip(flat_outputs, frozen_function.outputs, strict=False) if path}

    inputs = [spec for spec in placeholder_inputs(frozen) if spec.name in input_names]
    inputs.sort(key=lambda spec: input_names.index(spec.name))
    unknown = [k for k in (sample_feed or {}) if node_name(k) not in input_names]
    if unknown:
        raise FreezeError(unknown_names_message(unknown, input_names, what="sample input"))
    feed, zero_filled = verification_feed(inputs, sample_feed)

    def reference(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        flat = [tf.constant(feed[name + ":0"]) for name in input_names]
        args, kwargs = tf.nest.pack_sequence_as(concrete.structured_input_signature, flat)
        return [np.asarray(t) for t in tf.nest.flatten(concrete(*args, **kwargs))]

    holder = [frozen]
    del frozen
    try:
        written = _write_and_verify(holder, output_path, output_tensors=output_tensors, feed=feed,
                                    reference=reference, max_bytes=max_bytes, on_progress=on_progress,
                                    temp_owner=temp_owner)
    except (tf.errors.OpError, ValueError) as exc:
        raise FreezeError(f"verification run failed, nothing was written: {_message(exc)}") from exc
    return FreezeResult(
        **written,
        inputs=inputs,
        outputs=[node_name(t) for t in output_tensors],
        source_prefix=os.fspath(prefix_path),
        output_keys=output_keys,
        zero_filled=zero_filled,
        seconds=time.monotonic() - started,
    )


def freeze_tf2_with_recipe(prefix_path: str, output_path: str, *, recipe_path: str, **kwargs: Any) -> FreezeResult:
    """:func:`freeze_tf2` with the module of the recipe at ``recipe_path`` (importable by name).

    Takes the recipe's dotted path rather than its ``build_module`` so that the call can be sent
    to a sandboxed child process.
    """
    from persistence.recipes import load_recipe

    return freeze_tf2(prefix_path, output_path, build_module=load_recipe(recipe_path).build_tf2_module, **kwargs)
