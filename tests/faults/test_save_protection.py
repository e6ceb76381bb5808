"""A save job's max_to_keep against a run full of protected checkpoints, through a real worker.

The seed's run (``.meta`` on the first save only, a second state file for a subset saver) holds a
pinned, an exported and a latest checkpoint, all listed in the state file, so TensorFlow's Saver
recovers every one of them into its window. A save job with ``max_to_keep=1`` then writes six
checkpoints, and one of its own is pinned while it runs. Nothing protected may go, nor anything
the job did not write; the state files must still agree with the disk.
"""

from __future__ import annotations

import os
import uuid

import pytest

from dashboard import jobs, pruning, scanning
from dashboard.models import Checkpoint, Export, Job, Run
from tests.checkpoint_factory import make_seed_run
from tests.dashboard import job_recipes as recipes
from tests.live import wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory):
    return tmp_path_factory.mktemp("save-protection").resolve()


@pytest.fixture(autouse=True)
def fault_settings(settings, fault_root):
    settings.CHECKPOINT_ROOTS = [fault_root]
    settings.CHECKPOINT_RECIPES = recipes.ALL


@pytest.fixture(scope="module")
def worker(fault_root, django_db_setup, tmp_path_factory):
    # Slow steps: a second between saves, so a pin lands before the next rotation.
    live = recipes.start_worker(fault_root, tmp_path_factory.mktemp("logs") / "worker.log",
                                SLOW_RECIPE_STEP_DELAY="0.05")
    yield live
    live.stop()


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


def test_save_with_max_to_keep_deletes_nothing_protected(worker, fault_root):
    name = f"seed-{uuid.uuid4().hex[:6]}"
    seed = make_seed_run(fault_root / name, steps=(100, 200, 300, 400), max_to_keep=10)
    run = Run.objects.create(name=name, directory=str(fault_root / name))
    scanning.scan(run)
    rows = {c.step: c for c in run.checkpoints.filter(prefix__startswith="model.ckpt-")}
    assert sorted(rows) == [100, 200, 300, 400] and seed.meta_prefix == "model.ckpt-100"
    assert rows[400].meta_source_id == rows[100].pk  # the only .meta is model.ckpt-100's
    pruning.pin(rows[200], "release candidate")
    Export.objects.create(checkpoint=rows[300], path=str(fault_root / "exports" / "300.pb"), sha256="0" * 64)
    listed = [os.path.basename(p) for p in _tf().train.get_checkpoint_state(run.directory).all_model_checkpoint_paths]
    assert listed == ["model.ckpt-100", "model.ckpt-200", "model.ckpt-300", "model.ckpt-400"]
    before = sorted(os.listdir(run.directory))

    params = recipes.save_params(recipes.SLOW, steps=120, save_every=20, max_to_keep=1)
    params.update(restore_from=rows[400].pk, start_step=400, target_step=520)
    job = jobs.start(Job.SAVE, run=run, checkpoint=rows[400], params=params)
    mid = wait_for(lambda: run.checkpoints.filter(prefix="model.ckpt-440").first(), 90, what="model.ckpt-440")
    pruning.pin(mid, "looked good on the dashboard")
    recipes.wait_for_job(job, (Job.FINISHED, Job.FAILED), timeout=180)
    assert job.status == Job.FINISHED, job.error

    on_disk = set(os.listdir(run.directory))
    # Every file that was there before is still there (the job wrote new files only).
    assert set(before) <= on_disk, sorted(set(before) - on_disk)
    for step in (100, 200, 300, 400):
        row = Checkpoint.objects.get(pk=rows[step].pk)
        assert row.status == Checkpoint.PRESENT, (step, row.problems)
    assert Checkpoint.objects.get(prefix="model.ckpt-440", run=run).status == Checkpoint.PRESENT
    assert os.path.exists(os.path.join(run.directory, "model.ckpt-440.index"))
    assert job.result["pruned_by_saver"] == ["model.ckpt-420", "model.ckpt-460", "model.ckpt-480", "model.ckpt-500"]
    assert job.result["kept_from_rotation"]["model.ckpt-440"] == "pinned (looked good on the dashboard)"
    assert "model.ckpt-100" in job.result["kept_from_rotation"]
    for prefix in job.result["pruned_by_saver"]:
        assert Checkpoint.objects.get(run=run, prefix=prefix).status == Checkpoint.PRUNED
        assert not os.path.exists(os.path.join(run.directory, prefix + ".index"))

    # Both state files still agree with the disk, and the job's latest is TensorFlow's latest.
    tf = _tf()
    state = tf.train.get_checkpoint_state(run.directory)
    assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)
    assert tf.train.latest_checkpoint(run.directory) == os.path.join(run.directory, "model.ckpt-520")
    subset = tf.train.latest_checkpoint(run.directory, latest_filename="subset_checkpoint")
    assert subset is not None and os.path.exists(subset + ".index")
    # model.ckpt-100's .meta still restores the newest checkpoint by import_meta_graph.
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(run.directory, "model.ckpt-100.meta"))
        saver.restore(sess, os.path.join(run.directory, "model.ckpt-400"))
