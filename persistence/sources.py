"""Opening what an export is made from: a TF1 checkpoint with its meta graph, restored in a session,
or a TF2 object checkpoint read into the module its recipe builds.

Every export kind (frozen graph, SavedModel, TFLite) starts here, so each refuses the same things
with the same words: a missing meta graph or checkpoint, unknown output names, a graph with unsafe
ops (unless the run is trusted), a meta graph TensorFlow cannot import, a checkpoint that does not
restore into it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persistence.errors import FreezeError
from persistence.graphsafety import check_graph, load_meta_graph_def, node_name
from persistence.restore import (
    InputSpec,
    ProgressCallback,
    UnknownNameError,
    check_unknown_names,
    tensor_name,
    zeros_for,
)
from persistence.tfruntime import import_tensorflow


def report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is not None:
        on_progress(percent, message)


@dataclass
class RestoredGraph:
    """A TF1 graph with the checkpoint's values restored into ``session``."""

    graph: Any
    session: Any
    output_nodes: list[str]  # "probs"
    output_tensors: list[str]  # "probs:0"
    unsafe_ops_allowed: list[str] = field(default_factory=list)


@contextmanager
def restored_tf1(prefix_path: str, meta_path: str, *, outputs: list[str],
                 sample_feed: Mapping[str, Any] | None = None, allow_unsafe: bool = False,
                 clear_devices: bool = True, on_progress: ProgressCallback | None = None,
                 what: str = "freeze") -> Iterator[RestoredGraph]:
    """Import ``meta_path``'s graph, check it, restore ``prefix_path`` into a session; close it after.

    ``meta_path`` may be another checkpoint's ``.meta`` (``write_meta_graph=False``). ``outputs``
    are node or tensor names. Raises :class:`FreezeError` (or ``UnsafeGraph``) with a message
    for users before anything runs; ``what`` names the action in them.
    """
    if not outputs:
        raise FreezeError("no output nodes given")
    if not os.path.isfile(meta_path):
        raise FreezeError(
            f"missing meta graph {meta_path}: the graph structure is needed to {what}; pick the "
            ".meta of another checkpoint of the same run (written with write_meta_graph=True)"
        )
    if not os.path.isfile(os.fspath(prefix_path) + ".index"):
        raise FreezeError(f"missing checkpoint {prefix_path} (no .index file)")

    report(on_progress, 2, "reading meta graph")
    try:
        meta_graph_def = load_meta_graph_def(meta_path)
    except ValueError as exc:
        raise FreezeError(str(exc)) from exc
    try:
        check_unknown_names(meta_graph_def.graph_def, outputs, what="output")
        check_unknown_names(meta_graph_def.graph_def, list(sample_feed or {}), what="sample input")
    except UnknownNameError as exc:
        raise FreezeError(str(exc)) from None
    output_tensors = [tensor_name(name) for name in outputs]
    restore_op = meta_graph_def.saver_def.restore_op_name
    allowed = check_graph(meta_graph_def, fetches=[*outputs, *([restore_op] if restore_op else [])],
                          allow_unsafe=allow_unsafe, source=os.path.basename(meta_path))

    tf = import_tensorflow()
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        report(on_progress, 5, "importing meta graph")
        try:
            saver = v1.train.import_meta_graph(meta_graph_def, clear_devices=clear_devices)
        except (ValueError, KeyError, tf.errors.OpError) as exc:
            # A damaged .meta can parse as a protobuf yet describe a graph TensorFlow rejects.
            raise FreezeError(f"the meta graph {os.path.basename(meta_path)} cannot be imported: {exc}") from None
        del meta_graph_def
        for name in output_tensors:
            try:
                graph.get_tensor_by_name(name)
            except (KeyError, ValueError) as exc:
                raise FreezeError(f"output {name!r} is not a tensor: {exc}") from None
        with v1.Session(graph=graph) as sess:
            report(on_progress, 15, "restoring variables")
            if saver is not None:
                try:
                    saver.restore(sess, prefix_path)
                except tf.errors.OpError as exc:
                    raise FreezeError(f"cannot restore {prefix_path}: {exc.message}") from exc
            yield RestoredGraph(graph=graph, session=sess,
                                output_nodes=list(dict.fromkeys(node_name(name) for name in outputs)),
                                output_tensors=output_tensors, unsafe_ops_allowed=allowed)


def restored_tf2(prefix_path: str, build_module: Callable[[], Any], *, checkpoint_key: str = "model",
                 function_name: str = "serve", input_signature: Sequence[Any] | None = None,
                 on_progress: ProgressCallback | None = None) -> tuple[Any, Any]:
    """``(module, concrete function)``: the recipe's module with the checkpoint read into it.

    The checkpoint is read as ``tf.train.Checkpoint(**{checkpoint_key: module})``, the way it was
    written (``Checkpoint(model=module)``); ``module.<function_name>`` is traced with its own
    ``input_signature`` (or the one given). Raises :class:`FreezeError` when the checkpoint does
    not hold the module's variables or the function cannot be traced.
    """
    if not os.path.isfile(os.fspath(prefix_path) + ".index"):
        raise FreezeError(f"missing checkpoint {prefix_path} (no .index file)")
    tf = import_tensorflow()
    report(on_progress, 5, "building module")
    module = build_module()
    function = getattr(module, function_name, None)
    if function is None:
        raise FreezeError(f"{type(module).__name__} has no function {function_name!r}")
    if not hasattr(function, "get_concrete_function"):
        function = tf.function(function)
    report(on_progress, 15, "restoring checkpoint")
    status = tf.train.Checkpoint(**{checkpoint_key: module}).read(os.fspath(prefix_path))
    try:
        concrete = (function.get_concrete_function(*input_signature) if input_signature is not None
                    else function.get_concrete_function())
    except (TypeError, ValueError) as exc:
        raise FreezeError(f"cannot trace {function_name}: {exc} (give input_signature)") from exc
    try:
        # After tracing, so that variables created on first call have been matched too.
        status.assert_existing_objects_matched()
    except AssertionError as exc:
        status.expect_partial()
        detail = str(exc).split(":", 1)[0]  # TensorFlow goes on to print every variable's value
        raise FreezeError(
            f"the checkpoint does not hold this module's variables under {checkpoint_key!r}: {detail}"
        ) from None
    # The rest of the checkpoint (save_counter, optimizer slots) is not part of the model.
    status.expect_partial()
    return module, concrete


def verification_feed(inputs: list[InputSpec], sample_feed: Mapping[str, Any] | None
                      ) -> tuple[dict[str, np.ndarray], list[str]]:
    """What both sides of a verification are fed, by tensor name: the sample where it names an
    input, zeros elsewhere (those inputs are listed second)."""
    given = {node_name(k): v for k, v in (sample_feed or {}).items()}
    feed, zero_filled = {}, []
    for spec in inputs:
        zeros = zeros_for(spec)
        if spec.name in given:
            # The eager reference (TF2) does not cast like a Session feed does: float64 sample
            # arrays would not match a float32 signature.
            feed[spec.name + ":0"] = np.asarray(given[spec.name], dtype=zeros.dtype)
        else:
            feed[spec.name + ":0"] = zeros
            zero_filled.append(spec.name)
    return feed, zero_filled
