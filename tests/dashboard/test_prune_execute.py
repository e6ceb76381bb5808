"""Executing prunes through the real queue and a real worker: exactly the previewed plan, refusals,
one prune per run, auto-prune, and what TensorFlow sees afterwards (the seed's trap included)."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dashboard import jobs, retention, scanning
from dashboard.models import AuditEvent, Checkpoint, Job, Run
from persistence.statefile import read_state_file
from tests.dashboard.test_prune_plan import fake_run, on_disk
from tests.live import LiveWorker, run_jobs_to_completion, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def preview(client, name: str):
    """The plan the preview page showed. The page holds a summary of it (the full plan stays in
    the cache); it must be exactly the plan the run gives now, which is returned whole."""
    response = client.get(reverse("run-prune", args=[name]))
    assert response.status_code == 200
    shown = response.context["plan"]
    plan = retention.plan_retention(Run.objects.get(name=name))
    assert shown.fingerprint == plan.fingerprint
    assert (shown.deleted_count, shown.kept_count, shown.bytes_freed, shown.files_to_delete) == (
        plan.deleted_count, plan.kept_count, plan.bytes_freed, plan.files_to_delete)
    return plan


def prune_now(client, name: str, fingerprint: str):
    return client.post(reverse("run-prune-now", args=[name]), {"fingerprint": fingerprint})


def test_prune_now_executes_exactly_the_previewed_plan(client, maintainer, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 31)), max_to_keep=3, keep_every_n_steps=10)
    client.force_login(maintainer)
    before = on_disk(run.directory)
    plan = preview(client, "r")
    assert plan.deleted_count == 25 and "model.ckpt-1.meta" not in plan.files_to_delete

    response = prune_now(client, "r", plan.fingerprint)
    job = Job.objects.get(kind=Job.PRUNE)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.params["fingerprint"] == plan.fingerprint and job.requested_by == maintainer
    assert on_disk(run.directory) == before  # nothing happens in the web process

    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    assert job.result["plan"] == plan.to_dict()  # the job executed the plan the user saw
    assert on_disk(run.directory) == before - set(plan.files_to_delete)
    pruned = set(run.checkpoints.filter(status=Checkpoint.PRUNED).values_list("prefix", flat=True))
    assert pruned == plan.deleted_prefixes
    assert [f["name"] for f in run.checkpoints.get(step=1).files] == ["model.ckpt-1.meta"]  # kept alive
    state = read_state_file(run.directory)
    assert state.latest == "model.ckpt-30"
    assert state.all_prefixes == ["model.ckpt-10", "model.ckpt-20", "model.ckpt-28", "model.ckpt-29", "model.ckpt-30"]
    event = AuditEvent.objects.get(action="prune")
    assert (event.actor, event.run, event.bytes_freed) == (maintainer, run, plan.bytes_freed)
    assert event.details["plan"] == plan.to_dict() and event.details["job"] == job.pk
    assert event.details["execution"]["deleted_files"] == len(plan.files_to_delete)

    html = client.get(reverse("audit"), {"run": "r"}).content.decode()
    assert "Prune of r: 25 checkpoints deleted, 5 kept" in html and f"job #{job.pk}" in html


def test_a_run_that_changed_since_the_preview_refuses(client, maintainer, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 11)), max_to_keep=2)
    client.force_login(maintainer)
    seen = preview(client, "r")

    # Changed before "Prune now": the page says so and starts nothing.
    run.checkpoints.filter(step=3).update(pinned=True, pin_reason="look at it first")
    response = prune_now(client, "r", seen.fingerprint)
    assert response["Location"] == reverse("run-prune", args=["r"])
    assert "The run changed since the preview — preview again." in client.get(response["Location"]).content.decode()
    assert not Job.objects.exists()

    # Changed after "Prune now" but before the worker got to it: the job refuses, nothing is deleted.
    seen = preview(client, "r")
    prune_now(client, "r", seen.fingerprint)
    before = on_disk(run.directory)
    retention.update_retention(run, {"max_to_keep": 1}, actor=maintainer)
    run_jobs_to_completion()
    job = Job.objects.get(kind=Job.PRUNE)
    assert job.status == Job.FAILED and "The run changed since the preview — preview again." in job.error
    assert on_disk(run.directory) == before
    assert not run.checkpoints.filter(status=Checkpoint.PRUNED).exists()
    assert not AuditEvent.objects.filter(action="prune").exists()


def test_viewers_and_operators_cannot_prune(client, viewer, operator, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1)
    fingerprint = retention.plan_retention(run).fingerprint
    for user in (viewer, operator):
        client.force_login(user)
        assert prune_now(client, "r", fingerprint).status_code == 403
    assert not Job.objects.exists() and len(on_disk(run.directory)) == 8


def test_a_second_prune_of_the_same_run_is_refused_while_one_runs(client, maintainer, checkpoint_root, tmp_path):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 301)), max_to_keep=3)
    plan = retention.plan_retention(run)
    first = jobs.start(Job.PRUNE, run=run, params={"fingerprint": plan.fingerprint}, user=maintainer)
    second = jobs.start(Job.PRUNE, run=run, params={"fingerprint": plan.fingerprint}, user=maintainer)

    with LiveWorker(log_path=tmp_path / "worker.log", PRUNE_PROGRESS_DELAY_SECONDS="0.05"):
        def first_is_deleting():
            job = Job.objects.get(pk=first.pk)
            return job.status == Job.RUNNING and "holder" in job.result and job.progress >= 5
        wait_for(first_is_deleting, timeout=90, what="the first prune to be deleting")

        # The same body from another process (manage.py prune), while the first is halfway: refused.
        with pytest.raises(CommandError, match=f"Another prune of run r is running \\(job #{first.pk}\\)"):
            call_command("prune", "r", "--max-to-keep", "1", stdout=io.StringIO())
        client.force_login(maintainer)
        response = prune_now(client, "r", plan.fingerprint)
        assert response["Location"] == first.get_absolute_url()  # the page points at the running one

        wait_for(lambda: Job.objects.get(pk=second.pk).is_ended, timeout=120, what="both prunes to end")

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Job.FINISHED, first.error
    # The second waited its turn in the queue, then found the run changed by the first: not interleaved.
    assert second.status == Job.FAILED and "changed since the preview" in second.error
    assert second.started_at >= first.ended_at
    assert on_disk(run.directory) == {"checkpoint", "model.ckpt-1.meta"} | {
        f"model.ckpt-{s}{suffix}" for s in (298, 299, 300) for suffix in (".index", ".data-00000-of-00001")}
    assert AuditEvent.objects.filter(action="prune").count() == 1


# --- with real TensorFlow checkpoints ----------------------------------------------------------------


@pytest.mark.tf
def test_seed_trap_newest_still_restores_with_the_first_meta_and_training_carries_on(client, maintainer,
                                                                                     checkpoint_root):
    import numpy as np
    import tensorflow as tf

    from persistence.recipes import load_recipe
    from persistence.training import SaverOptions, train

    directory = str(checkpoint_root / "seed")
    recipe = load_recipe("persistence.recipes.antispam.AntiSpamRecipe")
    trained = train(directory, recipe, steps=60, save_every=10,
                    options=SaverOptions(write_meta_graph="first", max_to_keep=None))
    prefixes = [c.prefix for c in trained.checkpoints]
    assert [p.endswith(".meta") for p in os.listdir(directory)].count(True) == 1
    run = Run.objects.create(name="seed", directory=directory)
    scanning.scan(run)

    client.force_login(maintainer)
    policy = {"max_to_keep": "3", "min_age_seconds": "0", "best_mode": "min", "protect_exported": "on"}
    assert client.post(reverse("run-retention", args=["seed"]), policy).status_code == 302
    plan = preview(client, "seed")
    prune_now(client, "seed", plan.fingerprint)
    run_jobs_to_completion()
    assert Job.objects.get(kind=Job.PRUNE).status == Job.FINISHED

    first_meta = os.path.join(directory, f"{prefixes[0]}.meta")
    assert os.path.exists(first_meta)  # the trap: TensorFlow's own max_to_keep would have deleted it
    first = run.checkpoints.get(prefix=prefixes[0])
    assert first.status == Checkpoint.PRUNED and [f["name"] for f in first.files] == [f"{prefixes[0]}.meta"]
    newest = tf.train.latest_checkpoint(directory)
    assert os.path.basename(newest) == prefixes[-1]
    state = tf.train.get_checkpoint_state(directory)
    listed = [os.path.basename(p) for p in [state.model_checkpoint_path, *state.all_model_checkpoint_paths]]
    assert all(os.path.exists(os.path.join(directory, p + ".index")) for p in listed)
    assert set(listed) <= set(prefixes[-3:])

    sample = recipe.sample_input()
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(first_meta)
        saver.restore(sess, newest)
        feed = {graph.get_tensor_by_name(f"{name}:0"): value for name, value in sample.items()}
        probs = sess.run(graph.get_tensor_by_name(f"{recipe.output_names[0]}:0"), feed)
        assert np.isfinite(probs).all()
        # A new Saver carries on in the pruned directory.
        saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=70, write_meta_graph=False)
    assert os.path.basename(tf.train.latest_checkpoint(directory)) == "model.ckpt-70"
    state = tf.train.get_checkpoint_state(directory)
    assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)


@pytest.mark.tf
def test_tf2_manager_directory_after_a_prune_names_only_checkpoints_on_disk_and_carries_on(checkpoint_root):
    import tensorflow as tf

    from tests.checkpoint_factory import make_tf2_manager_run

    made = make_tf2_manager_run(checkpoint_root / "tf2", saves=6, max_to_keep=None)
    run = Run.objects.create(name="tf2", directory=made.directory, min_age_seconds=0)
    scanning.scan(run)
    call_command("prune", "tf2", "--max-to-keep", "2", stdout=io.StringIO())

    state = tf.train.get_checkpoint_state(made.directory)
    names = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    assert names == ["ckpt-5", "ckpt-6"] and os.path.basename(tf.train.latest_checkpoint(made.directory)) == "ckpt-6"
    assert {n.split(".")[0] for n in os.listdir(made.directory) if n.startswith("ckpt-")} == {"ckpt-5", "ckpt-6"}
    assert list(state.all_model_checkpoint_timestamps) == [made.timestamps["ckpt-5"], made.timestamps["ckpt-6"]]

    module = tf.Module()
    module.w = tf.Variable(tf.zeros([3, 2]), name="w")
    module.b = tf.Variable(tf.zeros([2]), name="b")
    checkpoint = tf.train.Checkpoint(model=module, step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, made.directory, max_to_keep=3)
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    assert float(module.w[0, 0]) == 7.0  # ones + six saves' assign_add
    manager.save()
    assert [os.path.basename(p) for p in tf.train.get_checkpoint_state(made.directory).all_model_checkpoint_paths] == [
        "ckpt-5", "ckpt-6", "ckpt-7"]


@pytest.mark.tf
def test_auto_prune_runs_after_a_scan_for_runs_that_turn_it_on(checkpoint_root):
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    made = make_many_tiny_checkpoints(checkpoint_root / "auto", 6)
    shutil.copytree(made.directory, checkpoint_root / "manual")
    auto = Run.objects.create(name="auto", directory=made.directory, max_to_keep=2, min_age_seconds=0, auto_prune=True)
    manual = Run.objects.create(name="manual", directory=str(checkpoint_root / "manual"), max_to_keep=2,
                                min_age_seconds=0)
    scans = [jobs.start(Job.SCAN, run=auto), jobs.start(Job.SCAN, run=manual)]

    run_jobs_to_completion()

    for scan in scans:
        scan.refresh_from_db()
        assert scan.status == Job.FINISHED, scan.error
    prune = Job.objects.get(kind=Job.PRUNE)
    assert scans[0].result["auto_prune_job"] == prune.pk and "auto_prune_job" not in scans[1].result
    assert prune.status == Job.FINISHED and prune.params == {"auto": True}, prune.error
    assert sorted(n for n in os.listdir(made.directory) if n.endswith(".index")) == [
        "model.ckpt-5.index", "model.ckpt-6.index"]
    assert len([n for n in os.listdir(checkpoint_root / "manual") if n.endswith(".index")]) == 6
    event = AuditEvent.objects.get(action="prune")
    assert event.summary.startswith("Auto-prune of auto: 4 checkpoints deleted") and event.actor is None
