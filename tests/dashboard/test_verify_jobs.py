"""Verify (restore) jobs through a real worker: corrupt checkpoints are found, and the worker carries on."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pytest
from django.urls import reverse

from dashboard import artifacts, jobs, scanning
from dashboard.models import Checkpoint, Job, Run
from tests import checkpoint_factory as factory
from tests.live import LiveWorker, module_roots, module_worker, wait_for

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("demo-template") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "verify-roots") as base:
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    with module_worker(django_db_blocker, tmp_path_factory) as live:
        yield live


def register(directory_root, template, name: str | None = None) -> Run:
    name = name or f"demo-{uuid.uuid4().hex[:6]}"
    directory = directory_root / name
    shutil.copytree(template, directory)
    run = Run.objects.create(name=name, directory=str(directory))
    scanning.scan(run)
    return run


def wait_for_jobs(worker: LiveWorker, *pending: Job, timeout: float = 120) -> None:
    def all_ended():
        for job in pending:
            job.refresh_from_db()
        return all(job.is_ended for job in pending)

    try:
        wait_for(all_ended, timeout, interval=0.1, what="verify jobs")
    except TimeoutError:
        log = worker.log_path.read_text()[-4000:] if worker.log_path else ""
        raise AssertionError(f"{[j.status for j in pending]}; worker log:\n{log}") from None


def flip_one_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.django_db(transaction=True)
def test_flipped_byte_and_truncated_index_are_corrupt_and_the_same_worker_goes_on(roots, demo_template, worker):
    damaged = register(roots / "checkpoints", demo_template)
    healthy = register(roots / "checkpoints", demo_template)
    flipped = damaged.checkpoints.get(step=50)
    truncated = damaged.checkpoints.get(step=25)
    flip_one_byte(flipped.path + ".data-00000-of-00001")
    factory.truncate_index(truncated.path)
    sound = healthy.checkpoints.get(step=50)
    pid = worker.process.pid

    pending = [
        jobs.start(Job.RESTORE, run=damaged, checkpoint=flipped),
        jobs.start(Job.RESTORE, run=damaged, checkpoint=truncated),
        jobs.start(Job.RESTORE, run=healthy, checkpoint=sound, params={"output": "probs"}),
    ]
    wait_for_jobs(worker, *pending)

    # A corrupt checkpoint is a verdict, not a crash: every job finished, in one worker process.
    assert [job.status for job in pending] == [Job.FINISHED] * 3, [job.error for job in pending]
    assert worker.process.poll() is None and worker.process.pid == pid
    flipped.refresh_from_db()
    truncated.refresh_from_db()
    sound.refresh_from_db()
    assert flipped.status == Checkpoint.CORRUPT
    assert "Checksum does not match" in flipped.verification["message"]  # TensorFlow's CRC32C check
    assert flipped.verification["failed_tensor"]
    assert pending[0].result["status"] == "corrupt" and pending[0].result["message"] == flipped.verification["message"]
    assert truncated.status == Checkpoint.CORRUPT
    assert "sstable" in truncated.verification["message"] or "magic" in truncated.verification["message"]

    assert sound.status == Checkpoint.VERIFIED
    import tensorflow as tf

    reader = tf.train.load_checkpoint(sound.path)
    stats = {v["name"]: v for v in sound.verification["variables"]}
    assert set(stats) == set(reader.get_variable_to_shape_map())
    kernel = reader.get_tensor("hidden/kernel")
    assert stats["hidden/kernel"]["min"] == pytest.approx(float(kernel.min()))
    assert stats["hidden/kernel"]["max"] == pytest.approx(float(kernel.max()))
    assert stats["hidden/kernel"]["mean"] == pytest.approx(float(kernel.mean(dtype=np.float64)))
    assert stats["hidden/kernel"]["std"] == pytest.approx(float(kernel.std(dtype=np.float64)))
    assert stats["hidden/kernel"]["nan_count"] == 0 and stats["global_step"]["max"] == 50
    restore = sound.verification["restore"]
    # Restored with the meta graph of step 25 (step 50 was saved with write_meta_graph=False), and
    # probs run on the recipe's four sample messages rather than on zeros.
    assert restore["ok"] and restore["meta"] == "model.ckpt-25.meta" and restore["fed"] == ["x"]
    assert restore["outputs"][0]["name"] == "probs" and restore["outputs"][0]["shape"] == [4, 2]
    assert pending[2].result["restore"]["ok"] and pending[2].result["variables"] == len(stats)


@pytest.mark.django_db(transaction=True)
def test_restore_problems_are_reported_without_hiding_sound_tensors(roots, demo_template, worker):
    run = register(roots / "checkpoints", demo_template)
    checkpoint = run.checkpoints.get(step=50)
    unknown = jobs.start(Job.RESTORE, run=run, checkpoint=checkpoint, params={"output": "prob"})
    wait_for_jobs(worker, unknown)
    checkpoint.refresh_from_db()
    assert unknown.status == Job.FINISHED and checkpoint.status == Checkpoint.VERIFIED
    assert not checkpoint.verification["restore"]["ok"]
    assert "closest: probs" in checkpoint.verification["restore"]["error"]


# --- the button and the page (no worker) -----------------------------------------------------


@pytest.fixture
def page_run(demo_template, checkpoint_root, db) -> Run:
    run = register(checkpoint_root, demo_template, name="demo")
    yield run
    jobs.get_queue().empty()  # nothing runs these jobs, and their rows are rolled back


def verify_url(checkpoint: Checkpoint) -> str:
    return reverse("checkpoint-verify", args=[checkpoint.run.name, checkpoint.pk])


def test_operator_starts_a_verify_job_with_an_optional_output(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    response = client.post(verify_url(checkpoint), {"output": "probs"}, follow=True)
    job = Job.objects.get()
    assert job.kind == Job.RESTORE and job.checkpoint == checkpoint and job.params == {"output": "probs"}
    assert job.requested_by == operator
    assert "Verifying model.ckpt-50" in response.content.decode()
    client.post(verify_url(checkpoint))
    assert Job.objects.order_by("-pk").first().params == {}


def test_unknown_output_is_refused_before_a_job_starts(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    html = client.post(verify_url(checkpoint), {"output": "prob"}, follow=True).content.decode()
    assert "closest: probs" in html
    assert not Job.objects.exists()


def test_viewers_cannot_verify_and_get_is_not_allowed(client, viewer, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(viewer)
    assert client.post(verify_url(checkpoint)).status_code == 403
    client.force_login(operator)
    assert client.get(verify_url(checkpoint)).status_code == 405
    assert not Job.objects.exists()


def test_checkpoint_page_shows_the_verification(client, viewer, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    artifacts.verify(checkpoint, output="probs")
    client.force_login(viewer)
    html = client.get(checkpoint.get_absolute_url()).content.decode()
    assert "all checksums match" in html and "Per-variable statistics (15 tensors" in html
    assert "Restored into a fresh graph from <code>model.ckpt-25.meta</code>" in html
    assert "<code>probs</code>" in html and "[4, 2]" in html

    flip_one_byte(checkpoint.path + ".data-00000-of-00001")
    artifacts.verify(checkpoint)
    html = client.get(checkpoint.get_absolute_url()).content.decode()
    assert "Checksum does not match" in html and 'class="badge bad">corrupt' in html



# --- partial restore -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_partial_restore_reports_restored_initialised_and_mismatched_variables(roots, demo_template, worker):
    run = register(roots / "checkpoints", demo_template)
    checkpoint = run.checkpoints.get(step=50)
    recipe = "persistence.recipes.antispam.AntiSpamRecipe"
    params = {"mode": "partial", "recipe": recipe, "variables": ["hidden/kernel", "hidden/bias", "output/bias"],
              "name_map": {"output/bias": "hidden/bias"}}  # a [32] checkpoint tensor for a [2] variable
    job = jobs.start(Job.RESTORE, run=run, checkpoint=checkpoint, params=params)
    unknown = jobs.start(Job.RESTORE, run=run, checkpoint=checkpoint,
                         params={**params, "variables": ["hidden/kernal"], "name_map": {}})
    wait_for_jobs(worker, job, unknown)

    assert job.status == Job.FINISHED, job.error
    assert job.result["restored"] == {"hidden/kernel": "hidden/kernel", "hidden/bias": "hidden/bias"}
    assert [m["graph_name"] for m in job.result["shape_mismatch"]] == ["output/bias"]
    assert job.result["shape_mismatch"][0]["checkpoint_shape"] == [32]
    assert {"output/kernel", "output/bias", "global_step"} <= set(job.result["left_initialised"])
    assert "hidden/kernel" not in job.result["left_initialised"]
    checkpoint.refresh_from_db()
    assert checkpoint.status == Checkpoint.PRESENT  # a partial restore is no verification
    assert unknown.status == Job.FAILED and "closest: hidden/kernel" in unknown.error


def test_partial_restore_form_checks_checkpoint_names_and_starts_the_job(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    url = reverse("checkpoint-partial-restore", args=["demo", checkpoint.pk])
    assert "persistence.recipes.antispam.AntiSpamRecipe" in client.get(url).content.decode()
    recipe = "persistence.recipes.antispam.AntiSpamRecipe"
    bad = client.post(url, {"recipe": recipe, "name_map": "output/bias=hiden/bias\nnot a mapping"})
    html = bad.content.decode()
    assert "closest: hidden/bias" in html and "Line 2 is not graph_variable=checkpoint_name." in html
    assert not Job.objects.exists()
    response = client.post(url, {"recipe": recipe, "variables": "hidden/kernel, hidden/bias",
                                 "name_map": "output/bias = hidden/bias"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.kind == Job.RESTORE and job.params == {
        "mode": "partial", "recipe": recipe, "variables": ["hidden/kernel", "hidden/bias"],
        "name_map": {"output/bias": "hidden/bias"},
    }


def test_viewers_cannot_partially_restore(client, viewer, page_run):
    client.force_login(viewer)
    url = reverse("checkpoint-partial-restore", args=["demo", page_run.checkpoints.get(step=50).pk])
    assert client.get(url).status_code == 403
