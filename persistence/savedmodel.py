"""SavedModel, TFLite and ONNX exports, each verified with the loader its users use before it becomes visible.

A SavedModel is what TF Serving, the TFLite converter and most TF2 tooling start from; TFLite is
what runs on phones. Both are made from the same sources as a frozen graph (see
:mod:`persistence.sources`): a TF1 checkpoint with its meta graph, whose chosen inputs and outputs
become the ``serving_default`` signature, or a TF2 checkpoint through its recipe's module.

Every export is written under a temporary name, loaded back with its own loader (a SavedModel
through TensorFlow's loader, ``tf.lite.Interpreter``, ``onnxruntime``), fed the same sample as
the checkpoint, and compared; only an export within its kind's tolerance is renamed into place.
A dynamic-range quantized TFLite model is meant to differ: it is kept, with the difference and
the share of samples whose top class agrees.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persistence.errors import FreezeError
from persistence.files import (
    atomic_directory,
    atomic_writer,
    process_owner,
    read_back,
    scratch_directory,
    sync_tree,
)
from persistence.freeze import FreezeResult, max_abs_diff
from persistence.graphsafety import node_name
from persistence.restore import InputSpec, ProgressCallback, placeholder_inputs
from persistence.sources import report, restored_tf1, restored_tf2, verification_feed
from persistence.tarball import ArchiveLayout, archive_layout
from persistence.tfruntime import ENVIRONMENT, import_tensorflow

SAVED_MODEL, TFLITE, ONNX = "saved_model", "tflite", "onnx"
SIGNATURE_KEY = "serving_default"
# The loaded SavedModel runs the very graph and values the checkpoint does.
SAVEDMODEL_TOLERANCE = 1e-6
# TFLite's kernels sum in another order (and fuse ops): float32 rounding, not a different model.
TFLITE_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-4  # likewise onnxruntime's


@dataclass
class ExportResult(FreezeResult):
    """A SavedModel, TFLite or ONNX export: a freeze's result, plus what these kinds add."""

    kind: str = SAVED_MODEL
    signature_inputs: dict[str, str] = field(default_factory=dict)  # signature key -> source tensor name
    signature_outputs: dict[str, str] = field(default_factory=dict)
    tolerance: float = SAVEDMODEL_TOLERANCE
    quantized: bool = False
    top_class_agreement: float | None = None  # quantized only: share of samples whose argmax agrees
    content_bytes: int = 0  # the files themselves


def _key(name: str) -> str:
    """A signature key for a node name: a Python identifier, as the loaded signature's kwargs."""
    key = re.sub(r"\W", "_", node_name(name))
    return key if key and not key[0].isdigit() else f"t_{key}"


def _run_signature(function: Any, feed_by_key: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tf = import_tensorflow()
    outputs = function(**{k: tf.constant(v) for k, v in feed_by_key.items()})
    return {k: np.asarray(v) for k, v in outputs.items()}


def _compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], what: str) -> float:
    missing = sorted(set(reference) - set(got))
    if missing:
        raise FreezeError(f"the {what} does not return {', '.join(missing)}")
    return max((max_abs_diff(got[k], v) for k, v in reference.items()), default=0.0)


def _top_class_agreement(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float | None:
    agree, total = 0, 0
    for key, value in reference.items():
        if value.ndim >= 1 and value.shape[-1] > 1 and got[key].shape == value.shape:
            agree += int(np.sum(np.argmax(value, axis=-1) == np.argmax(got[key], axis=-1)))
            total += int(np.prod(value.shape[:-1]))
    return agree / total if total else None


def _verify_tf2_savedmodel(directory: str, feed_by_key: dict[str, np.ndarray],
                           reference: dict[str, np.ndarray]) -> float:
    """Load a recipe's SavedModel the way TF2 code does (its object graph and functions) and
    call its serving signature."""
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(directory)
        function = loaded.signatures[SIGNATURE_KEY]
        got = _run_signature(function, feed_by_key)
    except (tf.errors.OpError, ValueError, KeyError, TypeError) as exc:
        raise FreezeError(f"the written SavedModel does not load and run: {exc}") from None
    return _compare(reference, got, "SavedModel")


def _verify_tf1_savedmodel(directory: str, feed_by_key: dict[str, np.ndarray],
                           reference: dict[str, np.ndarray]) -> float:
    """Load a TF1 SavedModel into a fresh graph and session, as TF Serving's loader does (the
    meta graph tagged ``serve``, variables restored from ``variables/``), and run the tensors
    its ``serving_default`` signature names, fed through the signature's input keys.

    Cheaper than ``tf.saved_model.load``, which wraps the same graph and restore in functions
    before running them; what is checked is the same: the files on disk, and a signature that
    takes exactly the inputs given and whose outputs are the checkpoint's values.
    """
    tf = import_tensorflow()
    v1 = tf.compat.v1
    try:
        with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
            meta_graph = v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING], directory)
            signature = meta_graph.signature_def[SIGNATURE_KEY]
            if set(signature.inputs) != set(feed_by_key):
                raise FreezeError(f"the written signature takes {', '.join(sorted(signature.inputs)) or 'nothing'}, "
                                  f"not {', '.join(sorted(feed_by_key))}")
            fetches = {key: info.name for key, info in signature.outputs.items()}
            got = sess.run(fetches, {signature.inputs[key].name: value for key, value in feed_by_key.items()})
    except (tf.errors.OpError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise FreezeError(f"the written SavedModel does not load and run: {exc}") from None
    return _compare(reference, {key: np.asarray(value) for key, value in got.items()}, "SavedModel")


def _verify_savedmodel(directory: str, feed_by_key: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                       *, tf2: bool) -> float:
    """The largest difference between the written SavedModel's outputs and ``reference``."""
    verify = _verify_tf2_savedmodel if tf2 else _verify_tf1_savedmodel
    return verify(directory, feed_by_key, reference)


def _hash_archive(directory: str, top: str) -> tuple[ArchiveLayout, str]:
    """The layout of ``directory``'s archive (entries under ``top``) and its sha256."""
    layout = archive_layout(directory, top=top)
    return layout, layout.sha256()


def _remove_legacy_archive(output_dir: str) -> None:
    # Exports made before archives were streamed kept a .tar beside the directory; after a
    # re-export it would hold the replaced model. Only that one regular file is removed.
    legacy = output_dir + ".tar"
    try:
        if stat.S_ISREG(os.lstat(legacy).st_mode):
            os.unlink(legacy)
    except FileNotFoundError:
        pass


# --- SavedModel --------------------------------------------------------------------------------


def _build_tf1(prefix_path: str, meta_path: str, directory: str, *, outputs: list[str],
               sample_feed: Any, allow_unsafe: bool, clear_devices: bool,
               on_progress: ProgressCallback | None) -> dict[str, Any]:
    """Write the TF1 SavedModel into ``directory``; what verification needs about it."""
    tf = import_tensorflow()
    from tensorflow.python.util import deprecation

    v1 = tf.compat.v1
    with restored_tf1(prefix_path, meta_path, outputs=outputs, sample_feed=sample_feed,
                      allow_unsafe=allow_unsafe, clear_devices=clear_devices, on_progress=on_progress,
                      what="export a SavedModel") as restored:
        graph, sess = restored.graph, restored.session
        with deprecation.silence():
            subgraph = v1.graph_util.extract_sub_graph(graph.as_graph_def(), restored.output_nodes)
        inputs = placeholder_inputs(subgraph)
        feed, zero_filled = verification_feed(inputs, sample_feed)
        try:
            values = sess.run(restored.output_tensors, feed_dict=feed)
        except (tf.errors.OpError, ValueError) as exc:
            raise FreezeError(f"the checkpoint's own run failed, nothing was written: {exc}") from exc
        signature_inputs = {_key(spec.name): spec.name + ":0" for spec in inputs}
        signature_outputs = {_key(name): name for name in restored.output_tensors}
        if len(signature_outputs) != len(restored.output_tensors):
            raise FreezeError("two outputs map to one signature key; choose outputs with distinct names")
        signature = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={k: graph.get_tensor_by_name(t) for k, t in signature_inputs.items()},
            outputs={k: graph.get_tensor_by_name(t) for k, t in signature_outputs.items()},
        )
        report(on_progress, 40, "writing the SavedModel")
        with deprecation.silence():
            builder = v1.saved_model.Builder(directory)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={SIGNATURE_KEY: signature}, strip_default_attrs=True, clear_devices=True,
            )
            builder.save()
    return {
        "inputs": inputs, "outputs": restored.output_nodes, "zero_filled": zero_filled,
        "feed_by_key": {k: feed[t] for k, t in signature_inputs.items()},
        "reference": {k: v for k, v in zip(signature_outputs, values, strict=True)},
        "signature_inputs": signature_inputs, "signature_outputs": signature_outputs,
        "unsafe_ops_allowed": restored.unsafe_ops_allowed,
    }


def _build_tf2(prefix_path: str, directory: str, *, recipe_path: str, sample_feed: Any,
               on_progress: ProgressCallback | None) -> dict[str, Any]:
    from persistence.recipes import load_recipe

    tf = import_tensorflow()
    module, concrete = restored_tf2(prefix_path, load_recipe(recipe_path).build_tf2_module,
                                    on_progress=on_progress)
    specs = [spec for spec in tf.nest.flatten(concrete.structured_input_signature) if spec is not None]
    inputs = [InputSpec(name=spec.name, dtype=spec.dtype.name,
                        shape=None if spec.shape.rank is None else list(spec.shape.as_list()))
              for spec in specs]
    feed, zero_filled = verification_feed(inputs, sample_feed)
    args, kwargs = tf.nest.pack_sequence_as(concrete.structured_input_signature,
                                            [tf.constant(feed[spec.name + ":0"]) for spec in inputs])
    outputs = concrete(*args, **kwargs)
    if not isinstance(outputs, dict):
        outputs = {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(outputs))}
    report(on_progress, 40, "writing the SavedModel")
    tf.saved_model.save(module, directory, signatures={SIGNATURE_KEY: concrete})
    return {
        "inputs": inputs, "outputs": sorted(outputs), "zero_filled": zero_filled,
        "feed_by_key": {spec.name: feed[spec.name + ":0"] for spec in inputs},
        "reference": {k: np.asarray(v) for k, v in outputs.items()},
        "signature_inputs": {spec.name: spec.name for spec in inputs},
        "signature_outputs": {k: k for k in outputs}, "unsafe_ops_allowed": [],
    }


def _build(prefix_path: str, meta_path: str | None, directory: str, *, outputs: list[str],
           recipe_path: str | None, sample_feed: Any, allow_unsafe: bool, clear_devices: bool,
           on_progress: ProgressCallback | None) -> dict[str, Any]:
    if recipe_path:
        return _build_tf2(prefix_path, directory, recipe_path=recipe_path, sample_feed=sample_feed,
                          on_progress=on_progress)
    if meta_path is None:
        raise FreezeError("missing meta graph: a TF1 checkpoint needs its graph structure to be exported")
    return _build_tf1(prefix_path, meta_path, directory, outputs=outputs, sample_feed=sample_feed,
                      allow_unsafe=allow_unsafe, clear_devices=clear_devices, on_progress=on_progress)


def export_saved_model(prefix_path: str, output_dir: str, *, meta_path: str | None = None,
                       outputs: list[str] | None = None, recipe_path: str | None = None,
                       sample_feed: Any = None, allow_unsafe: bool = False, clear_devices: bool = True,
                       on_progress: ProgressCallback | None = None,
                       temp_owner: str | None = None) -> ExportResult:
    """Export a checkpoint as a SavedModel directory at ``output_dir``.

    TF1: ``meta_path`` and ``outputs`` (node names) as for a freeze; the signature's inputs are
    the placeholders those outputs need. TF2: ``recipe_path`` names the recipe whose module is
    saved with its serving function. Raises :class:`FreezeError` (or ``UnsafeGraph``) and leaves
    nothing at the final path when the export cannot be made or does not match the checkpoint.

    The size and sha256 recorded are those of the directory's reproducible archive
    (:mod:`persistence.tarball`), which downloads stream; it is hashed from the written files
    while the SavedModel is loaded back and synced to disk, and never written out.
    """
    started = time.monotonic()
    with atomic_directory(output_dir, owner=temp_owner, synced=True) as scratch:
        built = _build(prefix_path, meta_path, scratch, outputs=list(outputs or []), recipe_path=recipe_path,
                       sample_feed=sample_feed, allow_unsafe=allow_unsafe, clear_devices=clear_devices,
                       on_progress=on_progress)
        report(on_progress, 70, "verifying: loading the SavedModel")
        # Nothing writes to the directory any more: the disk syncs it and the archive is hashed
        # while the SavedModel is loaded back (fsync waits and sha256 release the GIL).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="export-finish") as pool:
            syncing = pool.submit(sync_tree, scratch)
            hashing = pool.submit(_hash_archive, scratch, Path(output_dir).name)
            diff = _verify_savedmodel(scratch, built["feed_by_key"], built["reference"], tf2=bool(recipe_path))
            layout, sha256 = hashing.result()
            syncing.result()
        if not diff <= SAVEDMODEL_TOLERANCE:
            raise FreezeError(f"the written SavedModel differs from the checkpoint by {diff:g} "
                              f"(tolerance {SAVEDMODEL_TOLERANCE:g}); it was not kept")
    _remove_legacy_archive(os.fspath(output_dir))
    report(on_progress, 100, "exported and verified")
    return ExportResult(
        path=os.fspath(output_dir), kind=SAVED_MODEL, size_bytes=layout.st_size, sha256=sha256, node_count=0,
        op_histogram={}, inputs=built["inputs"], outputs=built["outputs"], signature_inputs=built["signature_inputs"],
        signature_outputs=built["signature_outputs"], max_abs_diff=diff, tolerance=SAVEDMODEL_TOLERANCE,
        verified=True, content_bytes=layout.content_bytes, source_prefix=os.fspath(prefix_path),
        meta_path=meta_path, zero_filled=built["zero_filled"], unsafe_ops_allowed=built["unsafe_ops_allowed"],
        seconds=time.monotonic() - started,
    )


# --- single-file kinds: TFLite, ONNX ------------------------------------------------------------


def _run_tflite(model: bytes, feed_by_key: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tf = import_tensorflow()
    try:
        with warnings.catch_warnings():
            # "tf.lite.Interpreter is deprecated" in favour of LiteRT, which runs the same model.
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_content=model)
        runner = interpreter.get_signature_runner(SIGNATURE_KEY)
        details = runner.get_input_details()
        got = runner(**{k: np.asarray(v, dtype=details[k]["dtype"]) for k, v in feed_by_key.items()})
    except (ValueError, RuntimeError, KeyError) as exc:
        raise FreezeError(f"the written TFLite model does not load and run: {exc}") from None
    return {k: np.asarray(v) for k, v in got.items()}


def _run_onnx(model: bytes, feed_by_key: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        values = session.run(names, {i.name: feed_by_key[i.name] for i in session.get_inputs()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no public base class
        raise FreezeError(f"the written ONNX model does not load and run: {exc}") from None
    return dict(zip(names, (np.asarray(v) for v in values), strict=True))


def _convert_tflite(saved_model: str, scratch: str, quantize: bool) -> bytes:
    tf = import_tensorflow()
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE_KEY])
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError, RuntimeError, ...
        raise FreezeError(f"TFLite cannot convert this model: {str(exc).strip()[:2000]}") from None


# tf2onnx's opset: what onnxruntime of the pinned release runs, and old enough for most runtimes.
ONNX_OPSET = 17


def _convert_onnx(saved_model: str, scratch: str, quantize: bool) -> bytes:
    # tf2onnx converts SavedModels through its command line only; it imports TensorFlow again
    # in that process, with this one's environment.
    output = os.path.join(scratch, "model.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved_model, "--signature_def", SIGNATURE_KEY,
         "--output", output, "--opset", str(ONNX_OPSET)],
        capture_output=True, text=True, env={**os.environ, **ENVIRONMENT}, timeout=1800, check=False,
    )
    if done.returncode != 0 or not os.path.isfile(output):
        lines = [line for line in done.stderr.splitlines() if "ERROR" in line or "Error" in line]
        raise FreezeError("tf2onnx cannot convert this model: " + ("; ".join(lines[-3:]) or done.stderr[-1000:]))
    with open(output, "rb") as handle:
        return handle.read()


_FILE_KINDS = {
    TFLITE: (_convert_tflite, _run_tflite, TFLITE_TOLERANCE, "TFLite model"),
    ONNX: (_convert_onnx, _run_onnx, ONNX_TOLERANCE, "ONNX model"),
}


def export_file(kind: str, prefix_path: str, output_path: str, *, quantize: bool = False,
                meta_path: str | None = None, outputs: list[str] | None = None, recipe_path: str | None = None,
                sample_feed: Any = None, allow_unsafe: bool = False, clear_devices: bool = True,
                on_progress: ProgressCallback | None = None, temp_owner: str | None = None) -> ExportResult:
    """Export a checkpoint as a ``.tflite`` (``kind`` TFLITE; ``quantize``: dynamic-range) or ``.onnx``.

    Made from a SavedModel built as :func:`export_saved_model` builds one, in a scratch directory
    beside ``output_path`` that is removed afterwards. The written file is loaded with its own
    runtime and must match the checkpoint within its kind's tolerance; a quantized model is kept
    whatever its difference, which is recorded with the top-class agreement.
    """
    if kind not in _FILE_KINDS:
        raise FreezeError(f"unknown export kind {kind!r}")
    convert, run, tolerance, what = _FILE_KINDS[kind]
    quantize = quantize and kind == TFLITE
    started = time.monotonic()
    owner = temp_owner or process_owner()
    target = Path(output_path)
    with scratch_directory(target, owner=owner) as scratch:
        # Never renamed into place: this SavedModel is only the converter's input.
        saved_model = os.path.join(scratch, "saved_model")
        built = _build(prefix_path, meta_path, saved_model, outputs=list(outputs or []), recipe_path=recipe_path,
                       sample_feed=sample_feed, allow_unsafe=allow_unsafe, clear_devices=clear_devices,
                       on_progress=on_progress)
        report(on_progress, 55, f"converting to {what}" + (" (dynamic-range quantized)" if quantize else ""))
        model = convert(saved_model, scratch, quantize)
    sha256 = hashlib.sha256(model).hexdigest()
    with atomic_writer(target, owner=owner) as handle:
        handle.write(model)
        handle.flush()
        size = len(model)
        del model
        # What is in the file is what is verified, before it is renamed into place.
        report(on_progress, 75, f"verifying: running the {what}")
        got = run(read_back(handle.fileno(), size), built["feed_by_key"])
        diff = _compare(built["reference"], got, what)
        agreement = _top_class_agreement(built["reference"], got) if quantize else None
        if not quantize and not diff <= tolerance:
            raise FreezeError(f"the {what} differs from the checkpoint by {diff:g} "
                              f"(tolerance {tolerance:g}); it was not kept")
    report(on_progress, 100, "exported and verified")
    return ExportResult(
        path=os.fspath(target), kind=kind, size_bytes=size, sha256=sha256, node_count=0, op_histogram={},
        inputs=built["inputs"], outputs=built["outputs"], signature_inputs=built["signature_inputs"],
        signature_outputs=built["signature_outputs"], max_abs_diff=diff, tolerance=tolerance,
        verified=quantize or diff <= tolerance, quantized=quantize, top_class_agreement=agreement,
        content_bytes=size, source_prefix=os.fspath(prefix_path), meta_path=meta_path,
        zero_filled=built["zero_filled"], unsafe_ops_allowed=built["unsafe_ops_allowed"],
        seconds=time.monotonic() - started,
    )
