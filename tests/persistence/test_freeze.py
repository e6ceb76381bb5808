"""Freezing real tiny checkpoints into .pb files, and checking the .pb the way a server loads it."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from persistence.errors import UnsafeGraph
from persistence.freeze import (
    FreezeError,
    freeze_checkpoint,
    freeze_tf2,
    max_abs_diff,
    suggest_output_nodes,
)
from persistence.graphdefs import estimate_graph_def_bytes, exceeds_protobuf_limit
from persistence.graphsafety import load_meta_graph_def

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE = {"x": np.array([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 3.0, 0.0, 1.0]], np.float32)}


def _train_run(directory, *, unsafe=False):
    """The anti-spam shape in miniature: x -> dense -> probs, a loss, Adam, a global step.

    Step 0 is saved with its meta graph, step 3 (after training) with write_meta_graph=False.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", [4, 2])
            bias = v1.get_variable("bias", [2], initializer=v1.zeros_initializer())
        logits = tf.add(tf.matmul(x, kernel), bias, name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits),
                              name="loss")
        if unsafe:
            tf.io.read_file("/etc/hostname", name="read_config")
            v1.py_func(lambda a: a, [x], tf.float32, name="python_hook")
        step = v1.train.get_or_create_global_step()
        train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
        v1.summary.scalar("loss", loss)
        saver = v1.train.Saver()
        rng = np.random.default_rng(0)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step)
            for _ in range(3):
                sess.run(train, {x: rng.random((16, 4)), y: rng.integers(0, 2, 16)})
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step, write_meta_graph=False)
    return os.path.join(directory, "model.ckpt-0"), os.path.join(directory, "model.ckpt-3")


def _numpy_probs(prefix, x):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    logits = x @ reader.get_tensor("dense/kernel") + reader.get_tensor("dense/bias")
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _run_pb(path, feed, outputs):
    """Load a .pb exactly as the seed serves it: ParseFromString + import_graph_def."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph_def = v1.GraphDef()
    with open(path, "rb") as handle:
        graph_def.ParseFromString(handle.read())
    with tf.Graph().as_default() as graph:
        v1.import_graph_def(graph_def, name="")
        with v1.Session(graph=graph) as sess:
            return graph_def, sess.run([f"{name}:0" for name in outputs],
                                       {f"{k}:0": v for k, v in feed.items()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    first, last = _train_run(str(directory))
    return first, last


def _entries(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_probs_is_suggested_first(run):
    first, _ = run
    suggestions = suggest_output_nodes(load_meta_graph_def(first + ".meta"))
    assert suggestions[0] == "probs"
    for name in suggestions:
        assert not name.startswith(("save", "gradients/", "Adam", "init", "global_step", "dense/"))
        assert "Summary" not in name and name != "loss_1"


def test_frozen_pb_gives_the_checkpoints_probs(run, tmp_path):
    first, last = run
    output = tmp_path / "exports" / "model.pb"
    # Step 3 has no meta of its own: its graph comes from step 0's .meta (write_meta_graph=False).
    result = freeze_checkpoint(last, first + ".meta", str(output), outputs=["probs"], sample_feed=SAMPLE)

    assert result.verified and result.max_abs_diff <= 1e-6
    graph_def, (probs,) = _run_pb(output, SAMPLE, ["probs"])
    np.testing.assert_allclose(probs, _numpy_probs(last, SAMPLE["x"]), atol=1e-6)
    assert np.abs(probs - _numpy_probs(first, SAMPLE["x"])).max() > 1e-4  # step 3's weights, not step 0's

    data = output.read_bytes()
    assert (result.size_bytes, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.path == str(output) and result.outputs == ["probs"]
    assert [(i.name, i.dtype, i.shape) for i in result.inputs] == [("x", "float32", [None, 4])]
    assert result.node_count == len(graph_def.node)
    assert result.op_histogram["Const"] >= 2 and result.op_histogram["Softmax"] == 1
    assert not {"VarHandleOp", "VariableV2", "SaveV2", "ApplyAdam"} & set(result.op_histogram)
    assert result.zero_filled == []
    assert _entries(output.parent) == ["model.pb"]  # no temporary file left behind


def test_verification_feeding_the_files_constants_gives_the_same_answer(run, tmp_path, monkeypatch):
    """Large constants are fed to the verification run from the written file, not loaded as nodes."""
    import persistence.freeze as freeze

    first, last = run
    loaded = freeze_checkpoint(last, first + ".meta", str(tmp_path / "a.pb"), outputs=["probs"], sample_feed=SAMPLE)
    monkeypatch.setattr(freeze, "FED_CONSTANT_BYTES", 1)  # every constant of the tiny model is "large"
    lifted = []
    original = freeze.lift_large_constants
    monkeypatch.setattr(freeze, "lift_large_constants",
                        lambda graph_def, min_bytes: lifted.append(original(graph_def, min_bytes)) or lifted[-1])
    fed = freeze_checkpoint(last, first + ".meta", str(tmp_path / "b.pb"), outputs=["probs"], sample_feed=SAMPLE)

    assert {"dense/kernel:0", "dense/bias:0"} <= set(lifted[0])
    assert fed.verified and fed.max_abs_diff == loaded.max_abs_diff
    # The file itself keeps its constants: only the verification run's copy was changed.
    graph_def, (probs,) = _run_pb(tmp_path / "b.pb", SAMPLE, ["probs"])
    assert {n.name: n.op for n in graph_def.node}["dense/kernel"] == "Const"
    np.testing.assert_allclose(probs, _numpy_probs(last, SAMPLE["x"]), atol=1e-6)
    assert fed.op_histogram == loaded.op_histogram


def test_constants_whose_bytes_disagree_with_their_shape_are_left_to_tensorflow():
    import tensorflow as tf

    from persistence.graphdefs import lift_large_constants

    graph_def = tf.compat.v1.GraphDef()
    for name, values in (("good", np.arange(6, dtype=np.float32).reshape(2, 3)), ("bad", np.zeros(4, np.float32))):
        node = graph_def.node.add(name=name, op="Const")
        node.attr["dtype"].type = tf.float32.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values))
    graph_def.node[1].attr["value"].tensor.tensor_content = b"\0" * 12  # 3 floats for a shape of 4

    fed = lift_large_constants(graph_def, 1)

    assert list(fed) == ["good:0"] and fed["good:0"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [n.op for n in graph_def.node] == ["Placeholder", "Const"]
    assert graph_def.node[0].attr["shape"].shape.dim[1].size == 3


def test_freeze_without_sample_feeds_zeros_and_accepts_tensor_names(run, tmp_path):
    first, _ = run
    progress = []
    result = freeze_checkpoint(first, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs:0"],
                               on_progress=lambda p, m: progress.append(p))
    assert result.verified and result.zero_filled == ["x"]
    assert progress == sorted(progress) and progress[-1] == 100


def test_unknown_output_node_names_the_closest(run, tmp_path):
    first, last = run
    with pytest.raises(FreezeError, match=r"'prob'.*closest: probs"):
        freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["prob"])
    with pytest.raises(FreezeError, match="'logit'.*logits"):
        freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs", "logit"])
    assert _entries(tmp_path) == []


def test_missing_meta_graph_is_a_clear_error(run, tmp_path):
    _, last = run
    with pytest.raises(FreezeError, match="missing meta graph"):
        freeze_checkpoint(last, last + ".meta", str(tmp_path / "m.pb"), outputs=["probs"])


def test_unsafe_graph_is_refused_with_the_list_and_allowed_when_trusted(tmp_path):
    first, last = _train_run(str(tmp_path / "run"), unsafe=True)
    output = tmp_path / "out" / "m.pb"
    with pytest.raises(UnsafeGraph) as caught:
        freeze_checkpoint(last, first + ".meta", str(output), outputs=["probs"])
    assert caught.value.ops == ["PyFunc", "ReadFile"]
    assert not output.exists()

    result = freeze_checkpoint(last, first + ".meta", str(output), outputs=["probs"], sample_feed=SAMPLE,
                               allow_unsafe=True)
    assert result.verified and result.unsafe_ops_allowed == ["PyFunc", "ReadFile"]
    # Only what probs needs was kept: the unsafe ops are not in the frozen graph.
    assert not {"PyFunc", "ReadFile"} & set(result.op_histogram)


def test_failure_during_write_leaves_the_previous_file_untouched(run, tmp_path):
    first, last = run
    output = tmp_path / "m.pb"
    output.write_bytes(b"previous export")

    bad_feed = {"x": np.zeros((2, 3), np.float32)}  # wrong width: the verification run fails
    with pytest.raises(FreezeError, match="verification run failed"):
        freeze_checkpoint(last, first + ".meta", str(output), outputs=["probs"], sample_feed=bad_feed)
    assert output.read_bytes() == b"previous export"
    assert _entries(tmp_path) == ["m.pb"]

    def stop_while_verifying(percent, message):
        if message.startswith("verifying"):
            raise RuntimeError("worker stopped")

    with pytest.raises(RuntimeError, match="worker stopped"):
        freeze_checkpoint(last, first + ".meta", str(output), outputs=["probs"],
                          on_progress=stop_while_verifying)
    assert output.read_bytes() == b"previous export"
    assert _entries(tmp_path) == ["m.pb"]


def test_variables_kept_from_freezing_are_refused_by_name(run, tmp_path):
    first, last = run
    with pytest.raises(FreezeError, match="kept from being frozen: dense/bias"):
        freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs"],
                          variables_denylist=["dense/bias"])
    # An allowlist that covers what the outputs need is fine (Adam's slots are not needed).
    result = freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs"],
                               variables_allowlist=["dense/kernel", "dense/bias"])
    assert result.verified


def test_corrupt_checkpoint_is_a_freeze_error_naming_it(run, tmp_path):
    import shutil

    first, last = run
    copy = tmp_path / "model.ckpt-3"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(last + suffix, str(copy) + suffix)
    data = tmp_path / "model.ckpt-3.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(FreezeError, match="cannot restore .*model.ckpt-3"):
        freeze_checkpoint(str(copy), first + ".meta", str(tmp_path / "out" / "m.pb"), outputs=["probs"])
    assert not (tmp_path / "out" / "m.pb").exists()


def test_protobuf_limit_predicate_on_estimated_size(run, tmp_path):
    import tensorflow as tf

    first, last = run
    result = freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs"])
    graph_def = tf.compat.v1.GraphDef.FromString((tmp_path / "m.pb").read_bytes())
    estimate = estimate_graph_def_bytes(graph_def)
    assert result.size_bytes <= estimate < 10 * result.size_bytes
    assert exceeds_protobuf_limit(graph_def, limit=result.size_bytes // 2)
    assert not exceeds_protobuf_limit(graph_def)

    # Large constants dominate and are counted from their shape; splat constants are not inflated.
    with tf.Graph().as_default() as graph:
        tf.constant(np.ones((512, 1024), np.float32), name="dense_weights")
        tf.constant(0.0, shape=[1024, 1024, 64], name="splat")
    big = graph.as_graph_def()
    assert big.ByteSize() <= estimate_graph_def_bytes(big) < big.ByteSize() + 4096
    assert exceeds_protobuf_limit(big, limit=2 * 1024 * 1024)
    assert not exceeds_protobuf_limit(big, limit=3 * 1024 * 1024)


def test_freeze_refuses_a_graph_beyond_the_limit_before_writing(run, tmp_path):
    first, last = run
    with pytest.raises(FreezeError, match="beyond protobuf's limit"):
        freeze_checkpoint(last, first + ".meta", str(tmp_path / "m.pb"), outputs=["probs"], max_bytes=100)
    assert _entries(tmp_path) == []


def test_max_abs_diff_handles_nan_inf_and_shape():
    assert max_abs_diff(np.array([1.0, np.nan, np.inf]), np.array([1.5, np.nan, np.inf])) == 0.5
    assert max_abs_diff(np.array([np.nan]), np.array([1.0])) == np.inf
    assert max_abs_diff(np.zeros((2, 2)), np.zeros((4,))) == np.inf
    assert max_abs_diff(np.array([b"a"]), np.array([b"a"])) == 0.0


# --- TF2 -------------------------------------------------------------------------------------


def _tf2_module_class():
    import tensorflow as tf

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__(name="classifier")
            self.kernel = tf.Variable(tf.zeros([4, 2]), name="kernel")
            self.bias = tf.Variable(tf.zeros([2]), name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"probs": tf.nn.softmax(tf.matmul(x, self.kernel) + self.bias)}

    return Classifier


@pytest.fixture(scope="module")
def tf2_checkpoint(tmp_path_factory):
    import tensorflow as tf

    classifier = _tf2_module_class()
    module = classifier()
    rng = np.random.default_rng(1)
    module.kernel.assign(rng.normal(size=(4, 2)).astype(np.float32))
    module.bias.assign(np.array([0.3, -0.3], np.float32))
    prefix = tf.train.Checkpoint(model=module).save(str(tmp_path_factory.mktemp("tf2") / "ckpt"))
    return classifier, prefix, module.kernel.numpy(), module.bias.numpy()


def test_freeze_tf2_module_matches_checkpoint(tf2_checkpoint, tmp_path):
    classifier, prefix, kernel, bias = tf2_checkpoint
    output = tmp_path / "tf2.pb"
    result = freeze_tf2(prefix, str(output), build_module=classifier, sample_feed=SAMPLE)
    assert result.verified and result.max_abs_diff <= 1e-6
    assert [(i.name, i.shape) for i in result.inputs] == [("x", [None, 4])]
    assert list(result.output_keys) == ["probs"]

    _, (probs,) = _run_pb(output, SAMPLE, [result.output_keys["probs"]])
    logits = SAMPLE["x"] @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert result.sha256 == hashlib.sha256(output.read_bytes()).hexdigest()


def test_freeze_tf2_refuses_a_checkpoint_that_does_not_hold_the_module(tf2_checkpoint, tmp_path):
    classifier, prefix, _, _ = tf2_checkpoint
    with pytest.raises(FreezeError, match="does not hold this module's variables under 'net'"):
        freeze_tf2(prefix, str(tmp_path / "tf2.pb"), build_module=classifier, checkpoint_key="net")
    assert _entries(tmp_path) == []
