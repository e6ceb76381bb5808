"""Checkpoints a trainer's own max_to_keep deleted read as rotated out (with when), not missing;
missing stays for files that vanished with nothing to explain it; and everything that switches on
statuses (transitions, retention, the page, scan --json) handles rotated."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import retention, scanning
from dashboard.models import Checkpoint, Run

pytestmark = pytest.mark.django_db


@contextmanager
def saver(directory: Path, max_to_keep: int = 2):
    """A TF1 Saver in its session; yields ``save(step) -> prefix``."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.get_variable("w", [3], initializer=v1.ones_initializer())
        s = v1.train.Saver(max_to_keep=max_to_keep)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            yield lambda step: os.path.basename(s.save(sess, str(directory / "model.ckpt"), global_step=step))


@pytest.fixture
def run(checkpoint_root) -> Run:
    directory = checkpoint_root / "trainer"
    directory.mkdir()
    return Run.objects.create(name="trainer", directory=str(directory))


def statuses(run: Run) -> dict[str, str]:
    return dict(run.checkpoints.values_list("prefix", "status"))


def test_checkpoint_deleted_by_the_savers_max_to_keep_becomes_rotated_with_when(run):
    with saver(Path(run.directory)) as save:
        save(1), save(2)
        scanning.scan(run)
        save(3)  # deletes model.ckpt-1 after dropping it from the state file
        counts = scanning.scan(run)
    assert counts["rotated"] == 1 and counts["missing"] == 0
    assert statuses(run) == {"model.ckpt-1": "rotated", "model.ckpt-2": "present", "model.ckpt-3": "present"}
    row = run.checkpoints.get(prefix="model.ckpt-1")
    assert row.gone_at is not None and row.gone_reason == "rotated out by the trainer's max_to_keep"
    assert not row.on_disk


def test_files_deleted_while_the_state_file_lists_them_are_missing(run):
    with saver(Path(run.directory), max_to_keep=5) as save:
        save(1), save(2)
    scanning.scan(run)
    for name in os.listdir(run.directory):
        if name.startswith("model.ckpt-1."):
            os.remove(os.path.join(run.directory, name))
    counts = scanning.scan(run)
    assert counts["missing"] == 1 and counts["rotated"] == 0
    assert statuses(run)["model.ckpt-1"] == Checkpoint.MISSING


def test_newer_checkpoint_vanishing_is_missing_not_rotated(run):
    with saver(Path(run.directory), max_to_keep=5) as save:
        save(1), save(2)
    scanning.scan(run)
    # Someone deletes the newest checkpoint and rewinds the state file to step 1: no rotation
    # deletes the newest.
    from persistence.statefile import write_state_file

    for name in os.listdir(run.directory):
        if name.startswith("model.ckpt-2."):
            os.remove(os.path.join(run.directory, name))
    write_state_file(run.directory, latest="model.ckpt-1", all_prefixes=["model.ckpt-1"])
    scanning.scan(run)
    assert statuses(run)["model.ckpt-2"] == Checkpoint.MISSING


def test_rotated_never_becomes_missing_and_pruned_never_becomes_rotated(run):
    with saver(Path(run.directory)) as save:
        save(1), save(2), save(3)
        scanning.scan(run)
        save(4)  # rotates 2 out
        run.checkpoints.filter(prefix="model.ckpt-3").update(status=Checkpoint.PRUNED)
        save(5)  # rotates 3 out: its row was pruned by us and stays so
        scanning.scan(run)
    assert statuses(run)["model.ckpt-2"] == Checkpoint.ROTATED
    assert statuses(run)["model.ckpt-3"] == Checkpoint.PRUNED
    os.remove(os.path.join(run.directory, "checkpoint"))  # nothing explains anything any more
    scanning.scan(run)
    assert statuses(run)["model.ckpt-2"] == Checkpoint.ROTATED
    assert not Checkpoint.may_move(Checkpoint.ROTATED, Checkpoint.MISSING)
    assert not Checkpoint.may_move(Checkpoint.PRUNED, Checkpoint.ROTATED)
    assert Checkpoint.may_move(Checkpoint.MISSING, Checkpoint.ROTATED)


def test_a_rotated_checkpoint_saved_again_is_present_again(run):
    with saver(Path(run.directory)) as save:
        save(1), save(2)
        scanning.scan(run)
        save(3)
        scanning.scan(run)
        assert statuses(run)["model.ckpt-1"] == Checkpoint.ROTATED
        save(1)  # a trainer restarted from an earlier step writes the same prefix again
        scanning.scan(run)
    row = run.checkpoints.get(prefix="model.ckpt-1")
    assert row.status == Checkpoint.PRESENT and row.gone_at is None


def test_retention_plans_around_rotated_rows_and_deletes_nothing_of_them(run):
    with saver(Path(run.directory)) as save:
        save(1), save(2)
        scanning.scan(run)
        save(3)
        scanning.scan(run)
    run.max_to_keep, run.min_age_seconds = 1, 0
    run.save()
    plan = retention.plan_retention(run)
    assert not any(name.startswith("model.ckpt-1.") for name in plan.files_to_delete)  # already gone
    assert {name.split(".", 2)[1] for name in plan.files_to_delete} == {"ckpt-2"}


def test_scan_json_lists_rotated_status(run):
    with saver(Path(run.directory)) as save:
        save(1), save(2)
        scanning.scan(run)
        save(3)
    out = StringIO()
    call_command("scan", run.directory, "--json", stdout=out)
    report = json.loads(out.getvalue())
    by_prefix = {c["prefix"]: c for c in report["checkpoints"]}
    assert by_prefix["model.ckpt-1"]["status"] == "rotated" and by_prefix["model.ckpt-1"]["gone_at"]
    assert by_prefix["model.ckpt-3"]["status"] == "present" and by_prefix["model.ckpt-3"]["gone_at"] is None


def test_run_page_reads_rotated_out_by_the_trainer_not_missing(client, viewer, run):
    with saver(Path(run.directory)) as save:
        save(1), save(2)
        scanning.scan(run)
        save(3)
        scanning.scan(run)
    client.force_login(viewer)
    html = client.get(reverse("run", args=[run.name])).content.decode()
    assert "rotated out" in html and "by the trainer's max_to_keep" in html
    assert "badge bad\">missing" not in html
    detail = client.get(reverse("checkpoint", args=[run.name, run.checkpoints.get(prefix="model.ckpt-1").pk]))
    assert "rotated out by the trainer&#x27;s max_to_keep" in detail.content.decode()


def test_checkpoint_manager_rotation_reads_rotated_too(run):
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0]))
    manager = tf.train.CheckpointManager(checkpoint, run.directory, max_to_keep=2)
    manager.save(), manager.save()
    scanning.scan(run)
    manager.save()  # deletes ckpt-1, then rewrites the state file without it
    scanning.scan(run)
    assert statuses(run) == {"ckpt-1": "rotated", "ckpt-2": "present", "ckpt-3": "present"}


def test_a_scan_racing_the_managers_rotation_first_sees_missing_then_rotated(run):
    import tensorflow as tf

    from persistence.statefile import write_state_file

    checkpoint = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0]))
    manager = tf.train.CheckpointManager(checkpoint, run.directory, max_to_keep=2)
    manager.save(), manager.save()
    scanning.scan(run)
    # What a scan between CheckpointManager's sweep and its second state-file write sees: ckpt-1's
    # files gone while the state file still lists it.
    for name in os.listdir(run.directory):
        if name.startswith("ckpt-1."):
            os.remove(os.path.join(run.directory, name))
    scanning.scan(run)
    assert statuses(run)["ckpt-1"] == Checkpoint.MISSING
    write_state_file(run.directory, latest="ckpt-2", all_prefixes=["ckpt-2"])
    scanning.scan(run)
    assert statuses(run)["ckpt-1"] == Checkpoint.ROTATED
