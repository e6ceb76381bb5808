"""GraphDef mechanics: our variable-to-constant conversion builds exactly TensorFlow's GraphDef; pieces encode it exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from persistence.graphdefs import convert_session_variables

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _graphs():
    """(name, graph builder) pairs: each builder returns the output node names of its graph."""
    import tensorflow as tf

    v1 = tf.compat.v1

    def ref_variables():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        with v1.variable_scope("dense", use_resource=False):
            kernel = v1.get_variable("kernel", [3, 2], initializer=v1.random_normal_initializer(seed=1))
            bias = v1.get_variable("bias", [2], initializer=v1.ones_initializer())
        v1.get_variable("unused", [5], use_resource=False)  # outside the outputs' subgraph
        tf.nn.softmax(tf.matmul(x, kernel) + bias, name="probs")
        return ["probs"]

    def resource_variables_with_gather():
        ids = v1.placeholder(tf.int32, [None], name="ids")
        table = v1.get_variable("table", [7, 4], use_resource=True,
                                initializer=v1.random_uniform_initializer(seed=2))
        scale = v1.get_variable("scale", [], use_resource=True, initializer=v1.constant_initializer(3.0))
        tf.identity(tf.reduce_sum(tf.gather(table, ids), axis=1) * scale.read_value(), name="out")
        return ["out"]

    def while_loop_v1_control_flow():
        x = v1.placeholder(tf.float32, [2], name="x")
        w = v1.get_variable("w", [2], use_resource=False, initializer=v1.constant_initializer(0.5))
        _, total = v1.while_loop(lambda i, acc: i < 3, lambda i, acc: (i + 1, acc + w * x), [0, x])
        tf.identity(total, name="total")
        return ["total"]

    return [("ref_variables", ref_variables), ("resource_variables", resource_variables_with_gather),
            ("while_loop", while_loop_v1_control_flow)]


@pytest.mark.parametrize("lists", [None, {"allowlist": None, "denylist": ["dense/bias"]}])
@pytest.mark.parametrize("case", range(3))
def test_conversion_equals_tensorflows_byte_for_byte(case, lists):
    import tensorflow as tf

    v1 = tf.compat.v1
    name, build = _graphs()[case]
    lists = lists or {}
    with tf.Graph().as_default() as graph:
        if name == "while_loop":
            v1.disable_control_flow_v2()
        try:
            outputs = build()
        finally:
            v1.enable_control_flow_v2()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            graph_def = graph.as_graph_def()
            theirs = v1.graph_util.convert_variables_to_constants(
                sess, graph_def, outputs, variable_names_whitelist=lists.get("allowlist"),
                variable_names_blacklist=lists.get("denylist"))
            ours = convert_session_variables(sess, graph_def, outputs, **lists)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    constants = [node for node in ours.node if node.op == "Const" and node.attr["value"].tensor.tensor_content]
    assert constants, "the variables became constants holding their values"
    assert not any(node.op in ("VariableV2", "VarHandleOp") for node in ours.node) or lists


def test_conversion_reads_one_variable_at_a_time():
    """Each value is fetched from the session on its own run, not all in one (which held them all)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        a = v1.get_variable("a", [3, 3], use_resource=False)
        b = v1.get_variable("b", [3, 3], use_resource=False)
        tf.identity(tf.matmul(tf.matmul(x, a), b), name="y")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            fetched = []
            run = sess.run

            def counting_run(fetches, *args, **kwargs):
                fetched.append(fetches)
                return run(fetches, *args, **kwargs)

            sess.run = counting_run
            frozen = convert_session_variables(sess, graph.as_graph_def(), ["y"])
            values = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in frozen.node if n.op == "Const"}
            np.testing.assert_array_equal(values["a"], run(a))
    assert fetched == ["a:0", "b:0"]


def test_serialized_chunks_are_the_graph_defs_own_encoding():
    """Written in pieces, the .pb holds exactly the bytes the deterministic ``SerializeToString``
    gives (functions, versions and nodes with large constants included), so the same graph is
    always the same file."""
    import tensorflow as tf

    from persistence.graphdefs import serialized_chunks

    @tf.function
    def double(v):
        return v * 2.0

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 300], name="x")
        weights = tf.constant(np.arange(300 * 300, dtype=np.float32).reshape(300, 300), name="w")
        tf.identity(double(tf.matmul(x, weights)), name="y")
    graph_def = graph.as_graph_def()
    assert graph_def.library.function and graph_def.versions.producer
    whole = graph_def.SerializeToString(deterministic=True)
    assert b"".join(serialized_chunks(graph_def)) == whole
    assert len(whole) > 300 * 300 * 4  # a node longer than one varint byte can say

    empty = tf.compat.v1.GraphDef()
    assert b"".join(serialized_chunks(empty)) == empty.SerializeToString(deterministic=True)
