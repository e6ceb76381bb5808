"""`manage.py compare A B --json` on real TensorFlow checkpoints, checked against numpy."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from dashboard import recording, scanning
from dashboard.models import Checkpoint, Comparison, Run
from persistence import training
from tests.live import BASE_DIR, subprocess_env

pytestmark = pytest.mark.tf

RESHAPED = {"hidden/kernel": np.arange(9, dtype=np.float32).reshape(3, 3), "extra/w": np.ones(4, np.float32)}


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def save_tf1(prefix: Path, arrays: dict[str, np.ndarray]) -> str:
    """A TF1 checkpoint holding exactly ``arrays`` under their names (a tiny graph, no training)."""
    tf = _tf()
    with tf.Graph().as_default():
        var_list = {name: tf.compat.v1.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(arrays.items())}
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(prefix), write_meta_graph=False)


def make_compare_files(root: Path) -> SimpleNamespace:
    """Run directories under ``root``: the demo run (steps 25, 50, 75, trained with Adam), the
    newest demo checkpoint re-saved without its optimizer slots, and a checkpoint where
    ``hidden/kernel`` has another shape and ``extra/w`` is new."""
    demo = training.make_demo_run(str(root / "demo"), steps=75, save_every=25)
    (root / "slim").mkdir()
    training.resave_subset(demo.checkpoints[-1].path, str(root / "slim"), "slim.ckpt-75", drop_optimizer_slots=True)
    (root / "reshaped").mkdir()
    save_tf1(root / "reshaped" / "model.ckpt-75", RESHAPED)
    return SimpleNamespace(root=root, demo=demo, slots=training.optimizer_slot_names(demo.checkpoints[-1].path))


def register(root: Path, name: str) -> Run:
    run = Run.objects.create(name=name, directory=str(root / name))
    scanning.scan(run)
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    return make_compare_files(tmp_path_factory.mktemp("compare-root").resolve())


@pytest.fixture
def runs(files, settings, db) -> dict[str, Run]:
    settings.CHECKPOINT_ROOTS = [files.root]
    found = {name: register(files.root, name) for name in ("demo", "slim", "reshaped")}
    recording.record_metrics(found["demo"], {c.prefix: c.metrics for c in files.demo.checkpoints})
    return found


def step(run: Run, number: int) -> Checkpoint:
    return run.checkpoints.select_related("run").get(step=number)


def compare_json(a: Checkpoint, b: Checkpoint) -> dict:
    out = io.StringIO()
    call_command("compare", str(a.pk), str(b.pk), "--json", stdout=out)
    return json.loads(out.getvalue())  # exactly one JSON object on stdout


def by_name(report: dict) -> dict[str, dict]:
    return {row["name"]: row for row in report["variables"]}


def numpy_reference(path_a: str, path_b: str, name: str) -> dict:
    tf = _tf()
    x = tf.train.load_checkpoint(path_a).get_tensor(name).astype(np.float64).ravel()
    y = tf.train.load_checkpoint(path_b).get_tensor(name).astype(np.float64).ravel()
    d = y - x
    norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
    return {
        "l2_a": norm_x,
        "l2_b": norm_y,
        "l2_diff": np.linalg.norm(d),
        "max_abs_diff": np.abs(d).max(),
        "relative_change": np.linalg.norm(d) / norm_x,
        "cosine": float(x @ y) / (norm_x * norm_y),
    }


def test_numbers_equal_numpy_on_tensorflow_reader_tensors_including_optimizer_slots(runs, files):
    a, b = step(runs["demo"], 25), step(runs["demo"], 75)
    report = compare_json(a, b)

    tf = _tf()
    reader = tf.train.load_checkpoint(a.path)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    rows = by_name(report)
    assert set(rows) == set(shapes)
    assert files.slots and files.slots <= set(rows)  # Adam's slots and beta powers are compared too
    for name in shapes:
        row = rows[name]
        assert row["shape_a"] == row["shape_b"] == list(shapes[name])
        assert row["dtype_a"] == row["dtype_b"] == dtypes[name].name
        for key, expected in numpy_reference(a.path, b.path, name).items():
            assert row[key] == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, key)
        assert row["note"] is None and row["changed"]
    assert rows["global_step"]["l2_diff"] == 50.0

    assert report["a"] == {"id": a.pk, "run": "demo", "prefix": "model.ckpt-25", "step": 25, "path": a.path}
    assert report["b"]["id"] == b.pk and report["b"]["step"] == 75
    loss = report["metrics"]["loss"]
    assert loss["a"] == a.metrics["loss"] and loss["b"] == b.metrics["loss"]
    assert loss["delta"] == pytest.approx(b.metrics["loss"] - a.metrics["loss"])
    assert report["summary"]["step_delta"] == 50 and report["summary"]["size_delta"] == b.size_bytes - a.size_bytes

    stored = Comparison.objects.get(a=a, b=b)  # the command stores what it printed
    assert stored.variables == report["variables"] and stored.job is None
    assert (stored.fingerprint_a, stored.fingerprint_b) == (a.fingerprint, b.fingerprint)
    assert Comparison.for_pair(a, b) == stored


def test_variable_on_one_side_only_has_null_numbers_on_the_missing_side(runs, files):
    full, slim = step(runs["demo"], 75), runs["slim"].checkpoints.select_related("run").get()
    rows = by_name(compare_json(full, slim))

    tf = _tf()
    reader = tf.train.load_checkpoint(full.path)
    for name in files.slots:
        row = rows[name]
        assert row["note"] == "only in A"
        assert row["shape_b"] is None and row["dtype_b"] is None and row["l2_b"] is None
        assert row["l2_diff"] is None and row["relative_change"] is None and row["cosine"] is None
        assert row["shape_a"] == list(reader.get_variable_to_shape_map()[name])
        assert row["l2_a"] == pytest.approx(np.linalg.norm(reader.get_tensor(name).astype(np.float64)))
    for name in set(rows) - files.slots:  # weights were copied unchanged
        assert rows[name]["l2_diff"] == 0 and rows[name]["relative_change"] == 0 and not rows[name]["changed"]

    reverse = compare_json(slim, full)
    assert {r["name"] for r in reverse["variables"] if r["note"] == "only in B"} == files.slots
    assert all(by_name(reverse)[n]["shape_a"] is None for n in files.slots)
    assert reverse["summary"]["only_b"] == len(files.slots)


def test_shape_change_is_reported_with_both_shapes_and_no_difference(runs):
    a = step(runs["demo"], 75)
    b = runs["reshaped"].checkpoints.select_related("run").get()
    report = compare_json(a, b)
    rows = by_name(report)

    kernel = rows["hidden/kernel"]
    assert kernel["note"] == "shape changed"
    assert kernel["shape_b"] == [3, 3] and kernel["shape_a"] != [3, 3]
    assert kernel["l2_b"] == pytest.approx(np.linalg.norm(RESHAPED["hidden/kernel"]))
    assert kernel["l2_diff"] is None and kernel["relative_change"] is None and kernel["max_abs_diff"] is None
    assert rows["extra/w"]["note"] == "only in B" and rows["extra/w"]["l2_b"] == pytest.approx(2.0)
    assert report["summary"]["shape_changed"] == 1 and report["summary"]["only_b"] == 1


def test_checkpoint_compared_with_itself_shows_zero_change_everywhere(runs):
    a = step(runs["demo"], 50)
    report = compare_json(a, a)
    assert report["variables"]
    for row in report["variables"]:
        assert row["l2_diff"] == 0 and row["max_abs_diff"] == 0 and row["relative_change"] == 0, row
        assert not row["changed"] and row["note"] is None
        assert row["cosine"] == pytest.approx(1.0)
    assert report["summary"]["changed"] == 0 and report["summary"]["max_relative_change"] == 0
    assert all(m["delta"] == 0 for m in report["metrics"].values())


def test_pruned_checkpoint_is_a_json_error_with_exit_status_1(runs):
    a, b = step(runs["demo"], 25), step(runs["demo"], 50)
    Checkpoint.objects.filter(pk=b.pk).update(status=Checkpoint.PRUNED)
    out = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("compare", str(a.pk), str(b.pk), "--json", stdout=out)
    assert info.value.returncode == 1
    assert "pruned" in json.loads(out.getvalue())["error"]
    assert not Comparison.objects.exists()


def test_plain_output_lists_variables_largest_change_first(runs):
    a, b = step(runs["demo"], 25), step(runs["demo"], 75)
    out = io.StringIO()
    call_command("compare", str(a.pk), str(b.pk), stdout=out)
    lines = out.getvalue().splitlines()
    assert "15 variables, 15 compared, 15 changed" in lines[2]
    stored = Comparison.objects.get(a=a, b=b)
    top = max(stored.variables, key=lambda r: r["relative_change"])
    assert lines[4].startswith(top["name"] + " ")


@pytest.mark.django_db(transaction=True)
def test_unknown_id_and_unreadable_checkpoint_give_json_errors_never_a_traceback(files, settings, tmp_path):
    root = tmp_path.resolve()
    settings.CHECKPOINT_ROOTS = [root]
    broken = root / "broken"
    broken.mkdir()
    for path in (files.root / "demo").glob("model.ckpt-50.*"):
        shutil.copy(path, broken / path.name)
    shutil.copy(files.root / "reshaped" / "model.ckpt-75.index", broken / "model.ckpt-75.index")
    shutil.copy(files.root / "reshaped" / "model.ckpt-75.data-00000-of-00001", broken / "model.ckpt-75.data-00000-of-00001")
    run = register(root, "broken")
    good, bad = run.checkpoints.get(step=50), run.checkpoints.get(step=75)
    data = broken / "model.ckpt-75.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])  # truncated after the scan: the read fails

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(BASE_DIR / "manage.py"), "compare", *args, "--json"],
            cwd=BASE_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=120,
        )

    unknown = manage(str(good.pk), "987654")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout) == {"error": "no checkpoint with id 987654"}
    assert "Traceback" not in unknown.stderr

    unreadable = manage(str(good.pk), str(bad.pk))
    assert unreadable.returncode == 1, unreadable.stdout + unreadable.stderr
    error = json.loads(unreadable.stdout)["error"]
    assert "model.ckpt-75" in error
    assert "Traceback" not in unreadable.stderr
    assert not Comparison.objects.exists()
