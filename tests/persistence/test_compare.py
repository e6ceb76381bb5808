"""Checkpoint comparison against numpy applied to TensorFlow's own reader, on real checkpoints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from persistence import compare
from persistence.compare import (
    NOTE_DTYPE_CHANGED,
    NOTE_NOT_NUMERIC,
    NOTE_ONLY_A,
    NOTE_ONLY_B,
    NOTE_SHAPE_CHANGED,
    NOTE_ZERO_A,
    NOTE_ZERO_B,
    OBJECT_GRAPH_KEY,
    CheckpointReadError,
    CorruptCheckpoint,
    compare_checkpoints,
    metric_deltas,
    step_over_step,
)

pytestmark = pytest.mark.tf

REPO = Path(__file__).resolve().parents[2]
EMB_SHAPE = (1024, 1024)  # 4 MiB of float32: big enough to be read in many slices


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def trained(tf, tmp_path_factory) -> dict[int, str]:
    """A tiny TF1 model trained with Adam, saved before training and after steps 1 and 3."""
    directory = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    prefixes = {}
    with tf.Graph().as_default():
        x = tf.constant(rng.normal(size=(8, EMB_SHAPE[0])).astype(np.float32))
        y = tf.constant(rng.integers(0, 2, size=8))
        emb = tf.compat.v1.get_variable(
            "emb", shape=EMB_SHAPE, initializer=tf.compat.v1.glorot_uniform_initializer(seed=1)
        )
        w = tf.compat.v1.get_variable(
            "dense/kernel",
            shape=(EMB_SHAPE[1], 2),
            initializer=tf.compat.v1.glorot_uniform_initializer(seed=2),
        )
        b = tf.compat.v1.get_variable("dense/bias", shape=(2,), initializer=tf.compat.v1.zeros_initializer())
        logits = tf.matmul(tf.tanh(tf.matmul(x, emb)), w) + b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        global_step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss, global_step=global_step)
        saver = tf.compat.v1.train.Saver(max_to_keep=None)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefixes[0] = saver.save(sess, str(directory / "model.ckpt"), global_step=0)
            for step in (1, 2, 3):
                sess.run(train)
                if step in (1, 3):
                    prefixes[step] = saver.save(sess, str(directory / "model.ckpt"), global_step=step)
    return prefixes


def _save_tf1(tf, prefix: Path, arrays: dict[str, np.ndarray | tuple[np.ndarray, str]]) -> str:
    """Write a TF1 checkpoint holding exactly ``arrays`` (name -> value, or (value, tf dtype))."""
    with tf.Graph().as_default():
        var_list = {}
        for i, (name, value) in enumerate(arrays.items()):
            if isinstance(value, tuple):
                value, dtype = value
                initial = tf.cast(tf.constant(value), dtype)
            else:
                initial = tf.constant(value)
            var_list[name] = tf.compat.v1.Variable(initial, name=f"v{i}")
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(prefix), write_meta_graph=False)


def _reference(tf, prefix_a: str, prefix_b: str, name: str) -> dict:
    """What the comparison must say, computed with plain numpy on ``get_tensor``."""
    a = tf.train.load_checkpoint(prefix_a).get_tensor(name).astype(np.float64).ravel()
    b = tf.train.load_checkpoint(prefix_b).get_tensor(name).astype(np.float64).ravel()
    d = b - a
    l2_a, l2_b = np.linalg.norm(a), np.linalg.norm(b)
    return {
        "l2_a": l2_a,
        "l2_b": l2_b,
        "l2_diff": np.linalg.norm(d),
        "max_abs_diff": np.abs(d).max() if d.size else 0.0,
        # The documented definition when A is all zeros: 0 if nothing moved, else undefined.
        "relative_change": np.linalg.norm(d) / l2_a if l2_a else (0.0 if not d.any() else None),
        "cosine": a @ b / (l2_a * l2_b) if l2_a and l2_b else None,
    }


def _assert_matches_reference(tf, comparison, prefix_a, prefix_b, rtol=1e-9) -> None:
    for row in comparison.variables:
        expected = _reference(tf, prefix_a, prefix_b, row.name)
        for key, value in expected.items():
            actual = getattr(row, key)
            if value is None:
                assert actual is None, (row.name, key)
            else:
                np.testing.assert_allclose(actual, value, rtol=rtol, atol=1e-12, err_msg=f"{row.name}.{key}")
        assert (row.nan_a, row.nan_b, row.inf_a, row.inf_b) == (0, 0, 0, 0)


def _rows(comparison) -> dict:
    return {row.name: row for row in comparison.variables}


def test_trained_checkpoints_match_numpy_including_adam_slots(tf, trained):
    progress = []
    result = compare_checkpoints(trained[1], trained[3], on_progress=lambda *args: progress.append(args))

    rows = _rows(result)
    expected_names = set(tf.train.load_checkpoint(trained[1]).get_variable_to_shape_map())
    assert set(rows) == expected_names
    assert {"emb/Adam", "emb/Adam_1", "dense/kernel/Adam", "beta1_power", "beta2_power"} <= set(rows)
    _assert_matches_reference(tf, result, trained[1], trained[3])
    assert rows["emb/Adam"].changed and rows["emb/Adam_1"].changed
    assert rows["global_step"].l2_diff == 2.0 and rows["global_step"].dtype_a == "int64"
    assert all(row.note is None for row in result.variables)
    assert [p[0] for p in progress] == list(range(1, len(rows) + 1))
    assert {p[1] for p in progress} == {len(rows)} and [p[2] for p in progress] == sorted(rows)


def test_summary_counts_and_largest_relative_change(tf, trained):
    result = compare_checkpoints(trained[1], trained[3])
    rows = result.variables
    summary = result.summary

    assert summary["compared"] == len(rows) and summary["changed"] == len(rows)
    assert summary["only_a"] == summary["only_b"] == summary["shape_changed"] == 0
    assert summary["total_l2_diff"] == pytest.approx(math.sqrt(sum(r.l2_diff**2 for r in rows)))
    top = max(rows, key=lambda r: r.relative_change)
    assert summary["max_relative_change_variable"] == top.name
    assert summary["max_relative_change"] == top.relative_change


def test_checkpoint_compared_with_itself_shows_no_change(trained):
    result = compare_checkpoints(trained[3], trained[3])

    for row in result.variables:
        assert row.l2_diff == 0.0 and row.max_abs_diff == 0.0 and row.relative_change == 0.0, row.name
        assert row.cosine == pytest.approx(1.0, abs=1e-12), row.name
        assert row.l2_a == row.l2_b
        assert not row.changed
    assert result.summary["changed"] == 0 and result.summary["total_l2_diff"] == 0.0


def test_zero_initialised_variables_get_the_documented_relative_change(tf, trained):
    # Before training, the bias and Adam's slots are all zeros.
    rows = _rows(compare_checkpoints(trained[0], trained[1]))

    bias = rows["dense/bias"]
    assert bias.l2_a == 0.0 and bias.l2_diff > 0
    assert bias.relative_change is None and bias.cosine is None and bias.note == NOTE_ZERO_A
    assert rows["emb/Adam"].relative_change is None and rows["emb/Adam"].note == NOTE_ZERO_A
    assert rows["emb"].note is None and rows["emb"].relative_change > 0

    backwards = _rows(compare_checkpoints(trained[1], trained[0]))["dense/bias"]
    assert backwards.relative_change == pytest.approx(1.0) and backwards.cosine is None
    assert backwards.note == NOTE_ZERO_B

    itself = _rows(compare_checkpoints(trained[0], trained[0]))["dense/bias"]
    assert itself.relative_change == 0.0 and itself.cosine is None and itself.note == NOTE_ZERO_A


@pytest.mark.parametrize(
    "slice_bytes",
    [
        4096,  # 1024 elements: far smaller than one float64 block
        4099,  # not a multiple of the item size
        3 * 4 * compare._BLOCK_ELEMENTS + 12,  # several blocks per slice, a partial one at the end
    ],
)
def test_sliced_reading_gives_the_same_numbers_as_whole_tensors(tf, trained, slice_bytes):
    # The raw path must really be taken for these variables, or this test proves nothing.
    source = compare._Source(trained[3], tf)
    assert source.raw_entry("emb") is not None and source.meta["emb"].nbytes > slice_bytes

    whole = compare_checkpoints(trained[1], trained[3], slice_bytes=1 << 30)
    sliced = compare_checkpoints(trained[1], trained[3], slice_bytes=slice_bytes)

    for w, s in zip(whole.variables, sliced.variables, strict=True):
        assert (w.name, w.note, w.nan_a, w.inf_b) == (s.name, s.note, s.nan_a, s.inf_b)
        for key in ("l2_a", "l2_b", "l2_diff", "max_abs_diff", "relative_change", "cosine"):
            np.testing.assert_allclose(
                getattr(s, key), getattr(w, key), rtol=1e-12, err_msg=f"{w.name}.{key}"
            )
    _assert_matches_reference(tf, sliced, trained[1], trained[3])


def test_variables_on_one_side_only_are_listed_with_their_side(tf, tmp_path):
    a = _save_tf1(
        tf, tmp_path / "a", {"kept": np.ones(3, np.float32), "dropped": np.full(4, 2.0, np.float32)}
    )
    b = _save_tf1(tf, tmp_path / "b", {"kept": np.ones(3, np.float32), "added": np.zeros((2, 2), np.float32)})

    result = compare_checkpoints(a, b)
    rows = _rows(result)

    assert set(rows) == {"kept", "dropped", "added"}
    dropped, added = rows["dropped"], rows["added"]
    assert dropped.note == NOTE_ONLY_A and dropped.shape_a == (4,) and dropped.shape_b is None
    assert dropped.l2_a == pytest.approx(4.0) and dropped.l2_b is None and dropped.l2_diff is None
    assert dropped.cosine is None and dropped.nan_a == 0 and dropped.nan_b is None
    assert added.note == NOTE_ONLY_B and added.dtype_a is None and added.dtype_b == "float32"
    assert added.l2_b == 0.0 and added.relative_change is None
    assert result.summary["only_a"] == 1 and result.summary["only_b"] == 1
    assert result.summary["compared"] == 1 and result.summary["changed"] == 0


def test_shape_and_dtype_changes_are_reported_without_differences(tf, tmp_path):
    a = _save_tf1(
        tf,
        tmp_path / "a",
        {
            "reshaped": np.arange(12, dtype=np.float32).reshape(3, 4),
            "retyped": np.arange(5, dtype=np.float32),
            "labels": np.array([b"spam", b"ham"]),
        },
    )
    b = _save_tf1(
        tf,
        tmp_path / "b",
        {
            "reshaped": np.arange(12, dtype=np.float32).reshape(4, 3),
            "retyped": np.arange(5, dtype=np.float64),
            "labels": np.array([b"spam", b"eggs"]),
        },
    )

    result = compare_checkpoints(a, b)
    rows = _rows(result)

    reshaped = rows["reshaped"]
    assert reshaped.note == NOTE_SHAPE_CHANGED
    assert (reshaped.shape_a, reshaped.shape_b) == ((3, 4), (4, 3))
    assert reshaped.l2_a == pytest.approx(np.linalg.norm(np.arange(12))) and reshaped.l2_b == reshaped.l2_a
    assert reshaped.l2_diff is reshaped.max_abs_diff is reshaped.cosine is reshaped.relative_change is None
    retyped = rows["retyped"]
    assert retyped.note == NOTE_DTYPE_CHANGED and (retyped.dtype_a, retyped.dtype_b) == ("float32", "float64")
    assert retyped.l2_diff is None and retyped.l2_b == pytest.approx(np.linalg.norm(np.arange(5)))
    labels = rows["labels"]
    assert labels.note == NOTE_NOT_NUMERIC and labels.dtype_a == "string"
    assert labels.l2_a is None and labels.l2_diff is None and labels.nan_a is None
    assert result.summary["shape_changed"] == 1 and result.summary["dtype_changed"] == 1
    assert result.summary["not_numeric"] == 1 and result.summary["compared"] == 0


@pytest.mark.parametrize("slice_bytes", [8, 1 << 20])
def test_nan_and_inf_are_counted_and_same_nan_is_no_change(tf, tmp_path, slice_bytes):
    base = np.arange(1, 41, dtype=np.float32)
    with_bad = base.copy()
    with_bad[[3, 7, 11]] = np.nan
    with_bad[[5, 9]] = [np.inf, -np.inf]
    a = _save_tf1(tf, tmp_path / "a", {"w": base, "both": with_bad})
    b = _save_tf1(tf, tmp_path / "b", {"w": with_bad, "both": with_bad})

    rows = _rows(compare_checkpoints(a, b, slice_bytes=slice_bytes))

    w = rows["w"]
    assert (w.nan_a, w.inf_a, w.nan_b, w.inf_b) == (0, 0, 3, 2)
    assert w.l2_a == pytest.approx(np.linalg.norm(base)) and math.isnan(w.l2_b)
    assert math.isnan(w.l2_diff) and math.isnan(w.max_abs_diff) and w.changed
    both = rows["both"]
    assert (both.nan_a, both.inf_a, both.nan_b, both.inf_b) == (3, 2, 3, 2)
    assert both.l2_diff == 0.0 and both.max_abs_diff == 0.0 and not both.changed
    json.dumps([row.to_dict() for row in rows.values()], allow_nan=False)  # NaN never reaches JSON
    assert rows["w"].to_dict()["l2_diff"] is None and rows["w"].to_dict()["changed"] is True


def test_other_numeric_dtypes_match_numpy(tf, tmp_path):
    rng = np.random.default_rng(3)
    values_a = rng.normal(size=300)
    values_b = values_a + rng.normal(scale=0.1, size=300)
    ints_a, ints_b = np.arange(-50, 250, dtype=np.int32), np.arange(-50, 250, dtype=np.int32)[::-1].copy()
    arrays_a = {
        "half": values_a.astype(np.float16),
        "bf16": (values_a.astype(np.float32), "bfloat16"),
        "f64": values_a,
        "ints": ints_a,
        "flags": values_a > 0,
    }
    arrays_b = {
        "half": values_b.astype(np.float16),
        "bf16": (values_b.astype(np.float32), "bfloat16"),
        "f64": values_b,
        "ints": ints_b,
        "flags": values_b > 0,
    }
    a = _save_tf1(tf, tmp_path / "a", arrays_a)
    b = _save_tf1(tf, tmp_path / "b", arrays_b)

    for slice_bytes in (64, 1 << 20):
        result = compare_checkpoints(a, b, slice_bytes=slice_bytes)
        assert {r.dtype_a for r in result.variables} == {"float16", "bfloat16", "float64", "int32", "bool"}
        _assert_matches_reference(tf, result, a, b)


def test_partitioned_variable_is_read_whole_and_matches_numpy(tf, tmp_path):
    # Partitioned variables are stored as slices under other keys: the raw path must step aside.
    prefixes = []
    for seed in (1, 2):
        with tf.Graph().as_default():
            tf.compat.v1.get_variable(
                "part",
                shape=(64, 8),
                partitioner=tf.compat.v1.fixed_size_partitioner(4),
                initializer=tf.compat.v1.random_normal_initializer(seed=seed),
            )
            saver = tf.compat.v1.train.Saver()
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                prefixes.append(saver.save(sess, str(tmp_path / f"p{seed}"), write_meta_graph=False))

    result = compare_checkpoints(*prefixes, slice_bytes=16)

    assert [r.name for r in result.variables] == ["part"] and result.variables[0].shape_a == (64, 8)
    _assert_matches_reference(tf, result, *prefixes)


def test_tf2_object_checkpoints_compare_and_skip_the_object_graph(tf, tmp_path):
    model = tf.Module()
    model.kernel = tf.Variable(np.random.default_rng(4).normal(size=(300, 20)).astype(np.float32))
    model.bias = tf.Variable(np.zeros(20, np.float32))
    checkpoint = tf.train.Checkpoint(model=model)
    first = checkpoint.save(str(tmp_path / "ckpt"))
    model.kernel.assign_add(tf.fill(model.kernel.shape, 0.5))
    second = checkpoint.save(str(tmp_path / "ckpt"))

    for slice_bytes in (1000, 1 << 20):
        result = compare_checkpoints(first, second, slice_bytes=slice_bytes)
        rows = _rows(result)
        assert OBJECT_GRAPH_KEY not in rows
        assert set(rows) == {
            "model/kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        }
        kernel = rows["model/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
        assert kernel.max_abs_diff == pytest.approx(0.5)
        assert kernel.l2_diff == pytest.approx(0.5 * math.sqrt(300 * 20))
        assert not rows["model/bias/.ATTRIBUTES/VARIABLE_VALUE"].changed
        assert rows["save_counter/.ATTRIBUTES/VARIABLE_VALUE"].l2_diff == 1.0
        _assert_matches_reference(tf, result, first, second)


@pytest.mark.parametrize("slice_bytes", [4096, 1 << 30])
def test_step_over_step_agrees_with_pairwise_comparisons(tf, trained, tmp_path, slice_bytes):
    prefixes = [trained[0], trained[1], trained[3]]
    progress = []

    table = step_over_step(prefixes, on_progress=lambda *args: progress.append(args), slice_bytes=slice_bytes)

    assert table["pairs"] == [[trained[0], trained[1]], [trained[1], trained[3]]]
    assert table["variables"] == sorted(tf.train.load_checkpoint(trained[0]).get_variable_to_shape_map())
    assert len(progress) == len(table["variables"])
    for column, (a, b) in enumerate(table["pairs"]):
        for row in compare_checkpoints(a, b).variables:
            rel = table["relative_change"][row.name][column]
            if row.relative_change is None:
                assert rel is None
            else:
                assert rel == pytest.approx(row.relative_change, rel=1e-12)
            assert table["l2_diff"][row.name][column] == pytest.approx(row.l2_diff, rel=1e-12)
            assert table["notes"][row.name][column] == row.note
    json.dumps(table, allow_nan=False)


def test_step_over_step_marks_variables_that_come_and_go(tf, tmp_path):
    p0 = _save_tf1(tf, tmp_path / "s0", {"w": np.ones(4, np.float32)})
    p1 = _save_tf1(tf, tmp_path / "s1", {"w": np.full(4, 2.0, np.float32), "late": np.ones(2, np.float32)})
    p2 = _save_tf1(tf, tmp_path / "s2", {"w": np.full(6, 2.0, np.float32), "late": np.ones(2, np.float32)})

    table = step_over_step([p0, p1, p2])

    assert table["relative_change"]["w"] == [pytest.approx(1.0), None]
    assert table["notes"]["w"] == [None, NOTE_SHAPE_CHANGED]
    assert table["relative_change"]["late"] == [None, 0.0]
    assert table["notes"]["late"] == [NOTE_ONLY_B, None]


def test_missing_checkpoint_is_a_read_error_caused_by_tensorflow_not_found(tf, trained, tmp_path):
    with pytest.raises(CheckpointReadError, match="cannot read checkpoint") as caught:
        compare_checkpoints(trained[1], str(tmp_path / "model.ckpt-404"))

    assert isinstance(caught.value.__cause__, tf.errors.NotFoundError)
    # A file that is not there says nothing about the bytes of one that is.
    assert not isinstance(caught.value, CorruptCheckpoint)


def _copy_with_flipped_byte(source: str, directory: Path, name: str) -> str:
    """A copy of checkpoint ``source`` in ``directory`` with one byte in the middle of ``name`` flipped."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    from persistence.bundle import read_index

    src = Path(source)
    for path in src.parent.glob(src.name + ".*"):
        (directory / path.name).write_bytes(path.read_bytes())
    copy = str(directory / src.name)
    entry = tensor_bundle_pb2.BundleEntryProto.FromString(read_index(copy).entries[name])
    shard = directory / f"{src.name}.data-{entry.shard_id:05d}-of-{read_index(copy).header.num_shards:05d}"
    data = bytearray(shard.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("slice_bytes", [4096, 1 << 30])
def test_flipped_byte_in_a_tensor_is_corrupt_on_either_read_path(tf, trained, tmp_path, slice_bytes):
    damaged = _copy_with_flipped_byte(trained[3], tmp_path, "emb")

    with pytest.raises(CorruptCheckpoint, match="'emb'") as caught:
        compare_checkpoints(trained[1], damaged, slice_bytes=slice_bytes)
    assert str(tmp_path) in str(caught.value)
    if slice_bytes == 4096:  # the sliced path, which reads the shard itself
        assert "does not match its checksum (CRC32C)" in str(caught.value)


def test_flipped_byte_fails_step_over_step_too(tf, trained, tmp_path):
    damaged = _copy_with_flipped_byte(trained[3], tmp_path, "emb")

    with pytest.raises(CorruptCheckpoint, match="checksum"):
        step_over_step([trained[0], trained[1], damaged], slice_bytes=4096)


def test_sliced_reads_check_the_checksum_the_index_records(tf, trained):
    # An intact checkpoint read in many slices passes the check and gives get_tensor's numbers.
    sliced = compare_checkpoints(trained[1], trained[3], slice_bytes=4096)
    whole = compare_checkpoints(trained[1], trained[3], slice_bytes=1 << 30)

    by_name = {r.name: r for r in whole.variables}
    for row in sliced.variables:
        assert row.l2_diff == pytest.approx(by_name[row.name].l2_diff, rel=1e-9)


@pytest.mark.parametrize("slice_bytes", [4096, 1 << 30])
def test_truncated_data_shard_is_an_error_not_a_silent_number(tf, trained, tmp_path, slice_bytes):
    source = Path(trained[3])
    for path in source.parent.glob(source.name + ".*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    data = next(tmp_path.glob(source.name + ".data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    with pytest.raises(CheckpointReadError, match=str(tmp_path)):
        compare_checkpoints(trained[1], str(tmp_path / source.name), slice_bytes=slice_bytes)


def test_metric_deltas_subtract_real_numbers_only():
    deltas = metric_deltas(
        {"loss": 0.5, "accuracy": 0.0, "tag": "x", "gone": 1.0}, {"loss": 0.25, "accuracy": 0.5, "tag": "y"}
    )

    assert deltas["loss"] == {"a": 0.5, "b": 0.25, "delta": -0.25, "relative": -0.5}
    assert deltas["accuracy"]["delta"] == 0.5 and deltas["accuracy"]["relative"] is None
    assert deltas["tag"]["delta"] is None and deltas["gone"] == {
        "a": 1.0,
        "b": None,
        "delta": None,
        "relative": None,
    }


# ---------------------------------------------------------------------------------------------
# Peak memory. Not asserted (machine-dependent; the benchmark in bench/ owns the bound), but this
# helper is how it is measured: a fresh interpreter, so ru_maxrss is this comparison's alone, and
# the growth is taken after TensorFlow is imported and both readers are open.

_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from persistence import compare
    compare._load_tf()
    compare._Source(sys.argv[2], compare._load_tf()); compare._Source(sys.argv[3], compare._load_tf())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = compare.compare_checkpoints(sys.argv[2], sys.argv[3], slice_bytes=int(sys.argv[4]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "peak_kib": peak, "summary": result.summary}))
    """
)


def peak_rss_of_compare(prefix_a: str, prefix_b: str, slice_bytes: int) -> dict:
    """Run one comparison in a subprocess; returns before/peak ru_maxrss (KiB) and the summary.

    Measured on this machine (2 cores) for one 200 MB float32 variable per side: the raw-sliced
    path grows RSS by about 2 x slice_bytes (+130 MB at the default 64 MiB), whole-tensor reading
    by about 2 x the variable (+400 MB).
    """
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(REPO), prefix_a, prefix_b, str(slice_bytes)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_helper_reports_the_same_comparison(trained):
    measured = peak_rss_of_compare(trained[1], trained[3], slice_bytes=64 << 10)

    assert measured["peak_kib"] >= measured["before_kib"] > 0
    assert measured["summary"] == compare_checkpoints(trained[1], trained[3], slice_bytes=64 << 10).summary
