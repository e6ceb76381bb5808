"""Unsafe-op screening of TF1 graphs: real meta graphs built here, never executed."""

from __future__ import annotations

import os

import pytest

from persistence.allowed_ops import ALLOWED_OPS, SAVER_OPS
from persistence.graphsafety import (
    UnsafeGraph,
    check_graph,
    find_refusals,
    load_meta_graph_def,
    unsafe_ops,
)

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _meta_graph(tmp_path, extra=None, *, as_text=False, name="model.meta"):
    """A tiny classifier's meta graph (Saver included); ``extra(tf, x, probs)`` adds more ops."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        w = v1.get_variable("dense/kernel", [4, 2])
        logits = tf.matmul(x, w, name="logits")
        probs = tf.nn.softmax(logits, name="probs")
        if extra is not None:
            extra(tf, x, probs, w)
        saver = v1.train.Saver()
        path = str(tmp_path / name)
        saver.export_meta_graph(path, as_text=as_text)
    return path


def test_saver_graph_is_safe_although_it_holds_save_ops(tmp_path):
    meta = load_meta_graph_def(_meta_graph(tmp_path))
    ops = {node.op for node in meta.graph_def.node}
    assert {"SaveV2", "RestoreV2"} <= ops
    assert unsafe_ops(meta) == []
    assert unsafe_ops(meta, fetches=["probs", meta.saver_def.restore_op_name]) == []


def test_read_file_and_py_func_are_reported(tmp_path):
    def extra(tf, x, probs, w):
        tf.io.read_file("/etc/hostname", name="sneaky_read")
        tf.compat.v1.py_func(lambda a: a, [x], tf.float32, name="sneaky_py")

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    assert unsafe_ops(meta) == ["PyFunc", "ReadFile"]
    assert unsafe_ops(meta.graph_def) == ["PyFunc", "ReadFile"]  # a bare GraphDef works too


def test_op_hidden_in_function_library_is_reported(tmp_path):
    def extra(tf, x, probs, w):
        @tf.function
        def leak(t):
            tf.io.write_file("/tmp/leak.txt", tf.strings.as_string(tf.reduce_sum(t)))  # noqa: S108
            return t

        leak(probs)

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    top_level = {node.op for node in meta.graph_def.node}
    assert "WriteFile" not in top_level  # only visible inside the library
    assert unsafe_ops(meta) == ["WriteFile"]


def test_print_to_a_file_is_unsafe_but_print_to_stderr_is_not(tmp_path):
    def to_stderr(tf, x, probs, w):
        tf.print(probs)

    def to_file(tf, x, probs, w):
        tf.print(probs, output_stream=f"file://{tmp_path}/out.txt")

    assert unsafe_ops(load_meta_graph_def(_meta_graph(tmp_path, to_stderr, name="a.meta"))) == []
    assert unsafe_ops(load_meta_graph_def(_meta_graph(tmp_path, to_file, name="b.meta"))) == ["PrintV2"]


def test_save_op_that_the_outputs_depend_on_is_reported(tmp_path):
    def extra(tf, x, probs, w):
        # Running "guarded_probs" would write the weights to an attacker-chosen path.
        save = tf.raw_ops.SaveV2(prefix=str(tmp_path / "exfiltrated"), tensor_names=["w"],
                                 shape_and_slices=[""], tensors=[w.read_value()])
        with tf.control_dependencies([save]):
            tf.identity(probs, name="guarded_probs")

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    # A SaveV2 that the saver did not build is refused even where nothing we run needs it...
    assert unsafe_ops(meta) == ["SaveV2"]
    assert unsafe_ops(meta, fetches=["probs"]) == ["SaveV2"]
    assert unsafe_ops(meta, fetches=["guarded_probs:0"]) == ["SaveV2"]
    [refusal] = find_refusals(meta, fetches=["guarded_probs:0"])
    assert refusal.reason.startswith("the outputs depend on it")  # ...and named for what runs it
    [refusal] = find_refusals(meta, fetches=["probs"])
    assert (refusal.node, refusal.where, refusal.reason) == ("SaveV2", "the graph", "a saver op outside any saver")


def test_the_savers_own_save_op_is_refused_once_an_output_depends_on_it(tmp_path):
    def extra(tf, x, probs, w):
        # A control dependency on a node that the Saver will only create later, patched below.
        tf.identity(probs, name="guarded_probs")

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    guarded = next(node for node in meta.graph_def.node if node.name == "guarded_probs")
    guarded.input.append("^" + meta.saver_def.save_tensor_name.split(":")[0])
    assert unsafe_ops(meta, fetches=["probs"]) == []
    assert unsafe_ops(meta, fetches=["guarded_probs"]) == ["SaveV2"]


def test_restore_ops_must_read_the_savers_filename_on_its_restore_path(tmp_path):
    meta = load_meta_graph_def(_meta_graph(tmp_path))
    restore_op = meta.saver_def.restore_op_name
    assert unsafe_ops(meta, fetches=["probs", restore_op]) == []
    nodes = {node.name: node for node in meta.graph_def.node}

    foreign = meta.__class__()
    foreign.CopyFrom(meta)
    prefix = next(node for node in foreign.graph_def.node if node.name == "save/RestoreV2")
    prefix.input[0] = "save/RestoreV2/tensor_names"  # any string but the fed filename tensor
    [refusal] = find_refusals(foreign, fetches=[restore_op])
    assert (refusal.op, refusal.node) == ("RestoreV2", "save/RestoreV2")
    assert "filename tensor 'save/Const:0'" in refusal.reason

    # An output that depends on the restore runs it without the filename fed: the saver's default
    # path, whatever the graph says it is.
    reading = meta.__class__()
    reading.CopyFrom(meta)
    reading.graph_def.node.add(name="restored_probs", op="Identity", input=["probs", "^" + restore_op],
                               attr={"T": nodes["probs"].attr["T"]})
    assert unsafe_ops(reading, fetches=["restored_probs", restore_op]) == ["RestoreV2"]


def test_a_second_savers_ops_are_tolerated_where_its_builder_put_them(tmp_path):
    def extra(tf, x, probs, w):
        tf.compat.v1.train.Saver({"renamed/w": w})  # scope save/ ... the main saver gets save_1/

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    assert {"save/RestoreV2", "save_1/RestoreV2"} <= {node.name for node in meta.graph_def.node}
    assert unsafe_ops(meta, fetches=["probs", meta.saver_def.restore_op_name]) == []
    # But the restore we run may not reach into the other saver.
    ours = meta.saver_def.restore_op_name
    other = "save/restore_all" if ours.startswith("save_1/") else "save_1/restore_all"
    restore = next(node for node in meta.graph_def.node if node.name == ours)
    restore.input.append("^" + other)
    assert unsafe_ops(meta, fetches=["probs", ours]) == ["RestoreV2"]


def test_calls_and_serialized_graphs_are_checked_with_where_they_were_found(tmp_path):
    from tensorflow.core.framework import graph_pb2

    hidden = graph_pb2.GraphDef()
    hidden.node.add(name="drop", op="WriteFile", input=["path", "contents"])
    meta = load_meta_graph_def(_meta_graph(tmp_path))
    holder = meta.graph_def.node.add(name="blob", op="Const")
    holder.attr["dtype"].type = 7  # DT_STRING
    holder.attr["value"].tensor.dtype = 7
    holder.attr["value"].tensor.string_val.append(hidden.SerializeToString())
    call = meta.graph_def.node.add(name="call", op="StatefulPartitionedCall")
    call.attr["f"].func.name = "ReadFile"  # a registered op, not a library function
    refusals = {(r.op, r.node, r.where) for r in find_refusals(meta)}
    assert refusals == {
        ("WriteFile", "drop", "a graph serialized in 'blob' of the graph"),
        ("ReadFile", "call", "the graph"),
    }
    with pytest.raises(UnsafeGraph, match=r"WriteFile \('drop' in a graph serialized in 'blob'"):
        check_graph(meta)


def test_a_library_function_named_like_an_op_is_refused(tmp_path):
    meta = load_meta_graph_def(_meta_graph(tmp_path))
    shadow = meta.graph_def.library.function.add()
    shadow.signature.name = "WriteFile"  # a call "WriteFile" could run the op, not this empty body
    meta.graph_def.node.add(name="call", op="WriteFile")
    assert {(r.op, r.where) for r in find_refusals(meta)} == {("WriteFile", "function 'WriteFile'")}


def test_check_graph_raises_with_the_list_unless_allowed(tmp_path):
    def extra(tf, x, probs, w):
        tf.io.matching_files("/etc/*")
        tf.io.read_file("/etc/hostname")

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    with pytest.raises(UnsafeGraph) as caught:
        check_graph(meta, source="model.meta")
    assert caught.value.ops == ["MatchingFiles", "ReadFile"]
    assert "MatchingFiles, ReadFile" in str(caught.value) and "model.meta" in str(caught.value)
    assert check_graph(meta, allow_unsafe=True) == ["MatchingFiles", "ReadFile"]


def test_load_meta_graph_def_reads_text_format_and_rejects_garbage(tmp_path):
    meta = load_meta_graph_def(_meta_graph(tmp_path, as_text=True))
    assert "probs" in {node.name for node in meta.graph_def.node}

    garbage = tmp_path / "garbage.meta"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(ValueError, match="not a MetaGraphDef"):
        load_meta_graph_def(garbage)
    with pytest.raises(FileNotFoundError):
        load_meta_graph_def(tmp_path / "absent.meta")


# Ops that read or write files, run Python or reach the network: what a deny-list used to name,
# and the ones that got past it. None may ever be on the allow-list.
KNOWN_DANGEROUS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration",
    "RecordInput", "WholeFileReaderV2", "TextLineReaderV2", "TFRecordReaderV2", "LMDBReader",
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDatasetV2", "TextLineDataset",
    "CSVDatasetV2", "ExperimentalSqlDataset", "MatchingFilesDataset", "DatasetToTFRecord",
    "SaveDatasetV2", "LoadDataset", "SnapshotDatasetV2", "CacheDatasetV2",
    "InitializeTableFromTextFileV2", "GenerateVocabRemapping", "LoadAndRemapMatrix",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "DebugIdentityV2", "DebugIdentityV3",
    "DebugNumericSummary", "PyFunc", "PyFuncStateless", "EagerPyFunc", "DataServiceDatasetV4",
    "RegisterDatasetV2", "DatasetFromGraph", "DatasetCardinality", "DumpTensor",
    "CalibrationStatisticsSaver", "RpcClient", "RpcCall", "RpcServer", "DTensorRestoreV2",
    "DecodeProtoV2", "EncodeProto", "RemoteCall", "SymbolicGradient", "XlaCallModule",
})


def test_allow_list_names_real_ops_and_none_that_touch_files_python_or_the_network():
    # A typo would only refuse the real op, but a list that drifts from TensorFlow's is not a list
    # anyone can review.
    import tensorflow as tf  # noqa: F401  (registers the ops)
    from tensorflow.python.framework import op_def_registry

    assert sorted(name for name in ALLOWED_OPS | SAVER_OPS if op_def_registry.get(name) is None) == []
    assert sorted(name for name in KNOWN_DANGEROUS if op_def_registry.get(name) is None) == []
    assert sorted(ALLOWED_OPS & KNOWN_DANGEROUS) == []
    assert sorted(ALLOWED_OPS & SAVER_OPS) == []
