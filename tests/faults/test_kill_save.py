"""``kill -9`` in the middle of a save job, with a real forked worker.

The job turns ``failed`` with a reason well within two minutes (the reconciler is called here
directly instead of waiting for cron), a retry continues from the last recorded checkpoint and
completes, and no ``Checkpoint`` row points at files that do not exist.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from dashboard import jobs
from dashboard.models import Checkpoint, Job, Run
from tests.dashboard import job_recipes as recipes
from tests.dashboard.conftest import make_user
from tests.live import wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS, EVERY = 300, 25
RECONCILE_DEADLINE = 120


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults").resolve()


@pytest.fixture(autouse=True)
def fault_settings(settings, fault_root):
    settings.CHECKPOINT_ROOTS = [fault_root]
    settings.CHECKPOINT_RECIPES = recipes.ALL


@pytest.fixture
def run(fault_root) -> Run:
    name = f"kill-{uuid.uuid4().hex[:8]}"
    (fault_root / name).mkdir()
    return Run.objects.create(name=name, directory=str(fault_root / name))


def start_worker(fault_root, tmp_path, name: str):
    # Slow enough steps that the kill lands between saves, with a few already recorded.
    return recipes.start_worker(fault_root, tmp_path / f"{name}.log", SLOW_RECIPE_STEP_DELAY="0.02")


def kill_mid_save(run: Run, worker, *, whole_worker: bool = False) -> Job:
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.SLOW, steps=STEPS, save_every=EVERY))
    wait_for(lambda: run.checkpoints.count() >= 3, 90, what="three recorded checkpoints")
    horses = wait_for(worker.horse_pids, 10, what="the work horse")
    if whole_worker:
        # The parent first: a live parent would see its horse die and tell RQ at once.
        os.kill(worker.process.pid, signal.SIGKILL)
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    return job


def reconcile_until_failed(job: Job) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RECONCILE_DEADLINE:
        jobs.reconcile_jobs()
        job.refresh_from_db()
        if job.status != Job.RUNNING:
            break
        time.sleep(1)
    assert job.status == Job.FAILED, (job.status, job.message)
    return time.monotonic() - started


def assert_rows_match_files(run: Run, *, every_file_recorded: bool = True) -> None:
    rows = list(run.checkpoints.exclude(status__in=[Checkpoint.PRUNED, Checkpoint.MISSING]))
    for row in rows:
        for f in row.files:
            assert os.path.exists(os.path.join(run.directory, f["name"])), f"{row.prefix}: {f['name']} is gone"
    if every_file_recorded:
        # Not right after a kill: the Saver may have written a checkpoint the horse did not live
        # to record. The retry rewrites and records it.
        recorded = {f["name"] for row in rows for f in row.files}
        on_disk = {n for n in os.listdir(run.directory) if os.path.isfile(os.path.join(run.directory, n))}
        assert on_disk - recorded == {"checkpoint"}, "files no row accounts for"


def retry_to_completion(job: Job, run: Run) -> Job:
    retry = jobs.retry_job(job, make_user(f"otto-{job.pk}", "operator"))
    recipes.wait_for_job(retry, [Job.FINISHED, Job.FAILED], timeout=120)
    assert retry.status == Job.FINISHED, retry.error
    assert retry.result["final_step"] == STEPS
    return retry


def test_kill_9_of_the_work_horse_fails_the_job_and_a_retry_completes(fault_root, run, tmp_path):
    import tensorflow as tf
    worker = start_worker(fault_root, tmp_path, "worker")
    try:
        job = kill_mid_save(run, worker)

        elapsed = reconcile_until_failed(job)

        assert elapsed < RECONCILE_DEADLINE
        assert "killed by signal 9" in job.error and job.ended_at
        recorded_before_retry = {s["prefix"] for s in job.result["saved"]}
        assert_rows_match_files(run, every_file_recorded=False)

        retry = retry_to_completion(job, run)
    finally:
        worker.stop()

    last_before = max(recorded_before_retry, key=lambda p: int(p.rsplit("-", 1)[1]))
    assert retry.retry_of == job and retry.result["resumed_from"] == last_before
    steps = sorted(run.checkpoints.values_list("step", flat=True))
    assert steps == list(range(EVERY, STEPS + 1, EVERY))  # each step once: nothing redone twice
    assert_rows_match_files(run)
    state = tf.train.get_checkpoint_state(run.directory)
    assert os.path.basename(state.model_checkpoint_path) == f"model.ckpt-{STEPS}"
    assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)
    reader = tf.train.load_checkpoint(os.path.join(run.directory, f"model.ckpt-{STEPS}"))
    assert int(reader.get_tensor("global_step")) == STEPS


def test_kill_9_of_the_whole_worker_fails_the_job_at_the_next_reconcile(fault_root, run, tmp_path):
    worker = start_worker(fault_root, tmp_path, "doomed")
    try:
        job = kill_mid_save(run, worker, whole_worker=True)  # nobody is left to tell RQ anything

        elapsed = reconcile_until_failed(job)
    finally:
        worker.stop()

    assert elapsed < 10  # same machine: a dead pid is certain without waiting for heartbeats to expire
    assert "worker process" in job.error and "died" in job.error
    assert_rows_match_files(run, every_file_recorded=False)

    replacement = start_worker(fault_root, tmp_path, "replacement")
    try:
        retry_to_completion(job, run)
    finally:
        replacement.stop()
    assert sorted(run.checkpoints.values_list("step", flat=True)) == list(range(EVERY, STEPS + 1, EVERY))
    assert_rows_match_files(run)
