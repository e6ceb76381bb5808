"""Verify, restore-and-run, partial restore and make-latest on real tiny TF1 checkpoints."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from persistence.errors import UnsafeGraph
from persistence.restore import (
    CORRUPT,
    INCOMPLETE,
    MISSING,
    VERIFIED,
    UnknownNameError,
    make_latest,
    partial_restore,
    restore_and_run,
    verify_checkpoint,
)

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE = np.array([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 3.0, 0.0, 1.0]], dtype=np.float32)


def _train_run(directory, *, unsafe=False):
    """Seed layout: step 0 saved with its meta, step 3 (after training) with write_meta_graph=False."""
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
        step = v1.train.get_or_create_global_step()
        train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
        saver = v1.train.Saver()
        rng = np.random.default_rng(0)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step)
            for _ in range(3):
                sess.run(train, {x: rng.random((16, 4)), y: rng.integers(0, 2, 16)})
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step, write_meta_graph=False)
    return os.path.join(directory, "model.ckpt-0"), os.path.join(directory, "model.ckpt-3")


def _values(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _softmax_probs(prefix, x):
    values = _values(prefix)
    logits = x @ values["dense/kernel"] + values["dense/bias"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    first, last = _train_run(str(directory))
    return str(directory), first, last


@pytest.fixture
def run_copy(run, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(run[0], directory)
    return str(directory), str(directory / "model.ckpt-0"), str(directory / "model.ckpt-3")


# --- verify ----------------------------------------------------------------------------------


def test_healthy_checkpoint_is_verified_with_numpy_statistics(run):
    result = verify_checkpoint(run[2])
    assert result.status == VERIFIED and result.ok
    expected = _values(run[2])
    assert [v.name for v in result.variables] == sorted(expected)
    for stats in result.variables:
        value = expected[stats.name]
        assert stats.shape == list(value.shape)
        assert stats.dtype == {"float32": "float32", "int64": "int64"}[str(value.dtype)]
        assert stats.min == pytest.approx(float(value.min()))
        assert stats.max == pytest.approx(float(value.max()))
        assert stats.mean == pytest.approx(float(value.mean(dtype=np.float64)))
        assert stats.std == pytest.approx(float(value.std(dtype=np.float64)), abs=1e-12)
        assert stats.nan_count == 0 and stats.inf_count == 0
    assert result.bytes_read == sum(v.nbytes for v in expected.values())
    assert {v.name: v.min for v in result.variables}["global_step"] == 3


def test_progress_is_reported_per_tensor(run):
    seen = []
    verify_checkpoint(run[2], on_progress=lambda percent, message: seen.append((percent, message)))
    assert seen[-1][0] == 100
    assert any("dense/kernel" in message for _, message in seen)


def test_flipped_byte_and_truncated_index_are_corrupt_and_the_worker_carries_on(run, run_copy):
    _, first, last = run_copy
    data = last + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(data, "wb").write(bytes(raw))

    flipped = verify_checkpoint(last)
    assert flipped.status == CORRUPT
    assert "checksum" in flipped.message.lower()  # TensorFlow's own CRC message
    assert flipped.failed_tensor is not None

    index = first + ".index"
    raw = open(index, "rb").read()
    open(index, "wb").write(raw[: len(raw) // 2])
    truncated = verify_checkpoint(first)
    assert truncated.status == CORRUPT
    assert "sstable" in truncated.message or "magic" in truncated.message

    # Same process, afterwards: the damage is still seen and a healthy checkpoint still reads.
    assert verify_checkpoint(last).status == CORRUPT
    assert verify_checkpoint(run[2]).status == VERIFIED


def test_truncated_data_file_is_corrupt(run_copy):
    _, _, last = run_copy
    data = last + ".data-00000-of-00001"
    raw = open(data, "rb").read()
    open(data, "wb").write(raw[:-8])
    result = verify_checkpoint(last)
    assert result.status == CORRUPT
    assert result.message


def test_missing_shard_is_incomplete_and_missing_index_is_missing(run_copy):
    _, first, last = run_copy
    os.remove(last + ".data-00000-of-00001")
    assert verify_checkpoint(last).status == INCOMPLETE
    os.remove(first + ".index")
    assert verify_checkpoint(first).status == MISSING


def test_nan_and_inf_are_counted_and_excluded_from_the_range(tmp_path):
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.get_variable("weird", initializer=np.array([1.0, np.nan, np.inf, -2.0, np.nan], np.float32))
        v1.get_variable("flag", initializer=np.array([True, False, True]))
        v1.get_variable("names", initializer=np.array([b"a", b"b"]), dtype=tf.string)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, str(tmp_path / "weird"))
    result = verify_checkpoint(prefix)
    assert result.status == VERIFIED
    stats = {v.name: v for v in result.variables}
    weird = stats["weird"]
    assert (weird.nan_count, weird.inf_count, weird.min, weird.max) == (2, 1, -2.0, 1.0)
    assert weird.mean == pytest.approx(-0.5)
    assert (stats["flag"].min, stats["flag"].max) == (0.0, 1.0)
    assert stats["names"].dtype == "string" and stats["names"].min is None
    assert stats["names"].nbytes == 2


def test_statistics_combine_exactly_across_chunks(tmp_path, monkeypatch):
    import tensorflow as tf

    import persistence.restore as restore

    rng = np.random.default_rng(7)
    values = rng.normal(1000.0, 3.0, size=(37, 11)).astype(np.float32)  # large mean, small spread
    values[3, 4] = np.nan
    values[20, 1] = -np.inf
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.get_variable("w", initializer=values)
        v1.get_variable("steps", initializer=np.arange(1000, dtype=np.int64))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(sess, str(tmp_path / "chunked"))
    monkeypatch.setattr(restore, "_CHUNK", 10)  # 41 chunks for w: every combination step is exercised
    stats = {v.name: v for v in verify_checkpoint(prefix).variables}
    finite = values[np.isfinite(values)].astype(np.float64)
    w = stats["w"]
    assert (w.nan_count, w.inf_count) == (1, 1)
    assert (w.min, w.max) == (float(finite.min()), float(finite.max()))
    assert w.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert w.std == pytest.approx(finite.std(), rel=1e-9)
    steps = stats["steps"]
    assert (steps.min, steps.max, steps.mean) == (0.0, 999.0, 499.5)
    assert steps.std == pytest.approx(np.arange(1000).std(), rel=1e-12)


# --- restore and run -------------------------------------------------------------------------


def test_restore_and_run_with_another_checkpoints_meta(run):
    directory, first, last = run
    result = restore_and_run(last, first + ".meta", feed={"x": SAMPLE}, outputs=["probs"])
    probs = result.outputs["probs"]
    np.testing.assert_allclose(probs, _softmax_probs(last, SAMPLE), atol=1e-6)
    # It really is step 3's weights, not step 0's that came with the meta graph.
    assert np.abs(probs - _softmax_probs(first, SAMPLE)).max() > 1e-4
    summary = result.summaries[0]
    assert summary.shape == [3, 2]
    assert summary.min == pytest.approx(float(probs.min())) and summary.max == pytest.approx(float(probs.max()))
    assert summary.mean == pytest.approx(0.5)
    assert result.zero_filled == ["y"]


def test_restore_and_run_feeds_zeros_shaped_by_placeholders(run):
    _, first, last = run
    result = restore_and_run(last, first + ".meta", feed=None, outputs=["probs:0", "logits"])
    np.testing.assert_allclose(result.outputs["logits"], _values(last)["dense/bias"][None, :], atol=1e-6)
    assert result.outputs["probs:0"].shape == (1, 2)  # unknown batch dimension -> 1
    assert sorted(result.zero_filled) == ["x", "y"]


def test_restore_and_run_refuses_unsafe_graph_unless_allowed(tmp_path):
    first, last = _train_run(str(tmp_path), unsafe=True)
    with pytest.raises(UnsafeGraph) as caught:
        restore_and_run(last, first + ".meta", feed={"x": SAMPLE}, outputs=["probs"])
    assert caught.value.ops == ["ReadFile"]
    result = restore_and_run(last, first + ".meta", feed={"x": SAMPLE}, outputs=["probs"], allow_unsafe=True)
    assert result.unsafe_ops_allowed == ["ReadFile"]
    np.testing.assert_allclose(result.outputs["probs"], _softmax_probs(last, SAMPLE), atol=1e-6)


def test_restore_and_run_unknown_output_names_closest(run):
    _, first, last = run
    with pytest.raises(UnknownNameError, match="'prob'.*closest: probs"):
        restore_and_run(last, first + ".meta", feed=None, outputs=["prob"])


# --- partial restore -------------------------------------------------------------------------


def _transfer_graph():
    """A new model: the old dense layer under new names, a new head, and two misfits."""
    import tensorflow as tf

    v1 = tf.compat.v1
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    with v1.variable_scope("encoder"):
        kernel = v1.get_variable("kernel", [4, 2])
        bias = v1.get_variable("bias", [2], initializer=v1.ones_initializer())
    with v1.variable_scope("head"):
        head = v1.get_variable("kernel", [2, 3], initializer=v1.constant_initializer(0.25))
    v1.get_variable("wide/kernel", [4, 5])  # shape differs from dense/kernel
    v1.get_variable("ghost", [1])  # mapped to a name the checkpoint lacks
    tf.nn.softmax(tf.matmul(tf.matmul(x, kernel) + bias, head), name="probs")


def test_partial_restore_with_name_map(run, tmp_path):
    _, _, last = run
    result = partial_restore(
        last, _transfer_graph,
        name_map={"encoder/kernel": "dense/kernel", "encoder/bias": "dense/bias",
                  "wide/kernel": "dense/kernel", "ghost": "no/such/variable"},
        variables=["encoder/kernel", "encoder/bias", "wide/kernel", "ghost"],
        save_prefix=str(tmp_path / "warm" / "warm.ckpt"),
    )
    assert result.restored == {"encoder/kernel": "dense/kernel", "encoder/bias": "dense/bias"}
    assert result.missing_in_checkpoint == ["ghost"]
    assert [(m.graph_name, m.checkpoint_name, m.graph_shape, m.checkpoint_shape)
            for m in result.shape_mismatch] == [("wide/kernel", "dense/kernel", [4, 5], [4, 2])]
    assert sorted(result.left_initialised) == ["ghost", "head/kernel", "wide/kernel"]

    # The warm-start checkpoint holds the restored values and the initial ones for the rest.
    warm, old = _values(result.saved_prefix), _values(last)
    np.testing.assert_array_equal(warm["encoder/kernel"], old["dense/kernel"])
    np.testing.assert_array_equal(warm["encoder/bias"], old["dense/bias"])
    np.testing.assert_array_equal(warm["head/kernel"], np.full((2, 3), 0.25, np.float32))
    assert os.path.exists(result.saved_prefix + ".meta")
    assert not os.path.exists(tmp_path / "warm" / "checkpoint")


def test_partial_restore_rejects_unknown_graph_variable(run):
    with pytest.raises(UnknownNameError, match="encoder/kernal.*closest: encoder/kernel"):
        partial_restore(run[2], _transfer_graph, variables=["encoder/kernal"])


# --- make latest -----------------------------------------------------------------------------


def test_make_latest_rolls_back_what_tensorflow_reads(run, run_copy):
    import tensorflow as tf

    directory, first, last = run_copy
    # The copy's state file still holds the original directory's absolute paths (a moved run).
    assert tf.train.latest_checkpoint(directory) == run[2]
    result = make_latest(directory, "model.ckpt-0")
    assert (result.previous_latest, result.latest) == ("model.ckpt-3", "model.ckpt-0")
    assert tf.train.latest_checkpoint(directory) == first
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-0", "model.ckpt-3"]


def test_make_latest_keeps_timestamps_and_adds_an_unlisted_prefix(run_copy):
    import tensorflow as tf

    from persistence.statefile import read_state_file, write_state_file

    directory, first, last = run_copy
    write_state_file(directory, latest="model.ckpt-3", all_prefixes=["model.ckpt-3"],
                     timestamps={"model.ckpt-3": 1700000000.5}, last_preserved_timestamp=1690000000.25)
    make_latest(directory, first)  # a full path inside the directory is accepted
    state = read_state_file(directory)
    assert state.latest == "model.ckpt-0"
    assert state.all_prefixes == ["model.ckpt-3", "model.ckpt-0"]
    assert state.timestamps["model.ckpt-3"] == 1700000000.5
    assert state.timestamps["model.ckpt-0"] == pytest.approx(os.stat(first + ".index").st_mtime)
    assert state.last_preserved_timestamp == 1690000000.25
    assert tf.train.latest_checkpoint(directory) == first


def test_make_latest_refuses_a_prefix_without_index(run_copy, tmp_path):
    directory, _, _ = run_copy
    before = open(os.path.join(directory, "checkpoint")).read()
    with pytest.raises(FileNotFoundError):
        make_latest(directory, "model.ckpt-7")
    with pytest.raises(FileNotFoundError):
        make_latest(directory, str(tmp_path / "elsewhere" / "model.ckpt-0"))
    assert open(os.path.join(directory, "checkpoint")).read() == before


def test_make_latest_replaces_an_unreadable_state_file(run_copy):
    import tensorflow as tf

    directory, first, _ = run_copy
    with open(os.path.join(directory, "checkpoint"), "w") as handle:
        handle.write("this is not { a state file")
    result = make_latest(directory, "model.ckpt-0")
    assert result.replaced_problem
    assert tf.train.latest_checkpoint(directory) == first
