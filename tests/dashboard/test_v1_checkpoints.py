"""A run written in TensorFlow's V1 format is recorded (step, size, variables), its pages say what
it is, verify and freeze refuse it with the reason, and a prune keeps TensorFlow's view right."""

from __future__ import annotations

import io
import os

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import artifacts, scanning
from dashboard.models import Checkpoint, Job, Run
from tests.checkpoint_factory import make_v1_run

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


@pytest.fixture
def v1_run(checkpoint_root) -> Run:
    made = make_v1_run(checkpoint_root / "v1")
    run = Run.objects.create(name="v1", directory=made.directory, min_age_seconds=0)
    scanning.scan(run)
    return run


def test_v1_checkpoints_are_recorded_and_shown(client, operator, v1_run):
    rows = list(v1_run.checkpoints.order_by("step"))
    assert [(c.prefix, c.step, c.format, c.status) for c in rows] == [
        (f"model.ckpt-{s}", s, "tf1-v1", Checkpoint.PRESENT) for s in (10, 20, 30)]
    for c in rows:
        sizes = {name: os.path.getsize(os.path.join(v1_run.directory, name)) for name in (c.prefix, f"{c.prefix}.meta")}
        assert {f["name"]: f["size"] for f in c.files} == sizes and c.size_bytes == sum(sizes.values())
        assert {v["name"] for v in c.variables} == {"dense/kernel", "dense/bias"} and c.variable_count == 2
    v1_run.refresh_from_db()
    assert v1_run.format == "tf1" and not any(s["problem"] for s in v1_run.state_files)
    assert rows[-1].latest_in == ["checkpoint"]

    client.force_login(operator)
    html = client.get(reverse("run", args=["v1"])).content.decode()
    assert "model.ckpt-30" in html and "model.ckpt-10" in html
    html = client.get(rows[0].get_absolute_url()).content.decode()
    assert "dense/kernel" in html and "TensorFlow V1 format" in html
    assert "verify, restore and freeze need the V2 format" in html
    assert reverse("checkpoint-verify", args=["v1", rows[0].pk]) not in html  # no button that would fail


def test_verify_and_freeze_refuse_v1_with_the_reason(client, operator, v1_run):
    checkpoint = v1_run.checkpoints.get(step=10)
    client.force_login(operator)
    response = client.post(reverse("checkpoint-verify", args=["v1", checkpoint.pk]), follow=True)
    assert "V1 checkpoint format" in response.content.decode()
    response = client.get(reverse("checkpoint-freeze", args=["v1", checkpoint.pk]), follow=True)
    assert "V1 checkpoint format" in response.content.decode()
    assert not Job.objects.exists()
    with pytest.raises(ValueError, match="V1 checkpoint format"):
        artifacts.verify(checkpoint)
    checkpoint.refresh_from_db()
    assert checkpoint.status == Checkpoint.PRESENT  # never taken for missing


def test_pruning_a_v1_run_keeps_tensorflow_state_consistent(v1_run):
    import tensorflow as tf

    call_command("prune", "v1", "--max-to-keep", "1", stdout=io.StringIO())
    assert sorted(os.listdir(v1_run.directory)) == ["checkpoint", "model.ckpt-30", "model.ckpt-30.meta"]
    state = tf.train.get_checkpoint_state(v1_run.directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-30"]
    assert os.path.basename(tf.train.latest_checkpoint(v1_run.directory)) == "model.ckpt-30"
    statuses = dict(v1_run.checkpoints.values_list("step", "status"))
    assert statuses == {10: Checkpoint.PRUNED, 20: Checkpoint.PRUNED, 30: Checkpoint.PRESENT}
