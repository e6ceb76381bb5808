"""Unsafe-op screening of TF1 graphs (DESIGN §6): real meta graphs built here, never executed."""

from __future__ import annotations

import os

import pytest

from persistence.graphsafety import (
    DENIED_OPS,
    UnsafeGraphError,
    check_graph,
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
    assert unsafe_ops(meta) == []  # SaveV2 alone is the saver's business...
    assert unsafe_ops(meta, fetches=["probs"]) == []
    assert unsafe_ops(meta, fetches=["guarded_probs:0"]) == ["SaveV2"]  # ...running it is not


def test_check_graph_raises_with_the_list_unless_allowed(tmp_path):
    def extra(tf, x, probs, w):
        tf.io.matching_files("/etc/*")
        tf.io.read_file("/etc/hostname")

    meta = load_meta_graph_def(_meta_graph(tmp_path, extra))
    with pytest.raises(UnsafeGraphError) as caught:
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


def test_every_denied_op_is_a_real_tensorflow_op():
    # A typo in the deny list would silently let the real op through.
    import tensorflow as tf

    registered = set(dir(tf.raw_ops))
    assert sorted(DENIED_OPS - registered) == []
