"""Verify, export and compare of a run in a bucket, staged through the local cache.

Against the loopback S3 server with real TensorFlow checkpoints: each result must equal the one of
the same checkpoint in a local run, the cache must be reused (GETs counted on the client), and a
damaged object must fail the job with a message, without credentials, never a 500.
"""

from __future__ import annotations

import os

import pytest
from django.urls import reverse

from dashboard import artifacts, comparing, jobs, scanning
from dashboard.models import Checkpoint, Export, Job, Run
from persistence import storage
from tests import checkpoint_factory as factory
from tests.live import LiveWorker
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

pytestmark = [pytest.mark.tf]


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=(100, 200, 300))
    return directory


@pytest.fixture
def runs(db, s3_bucket, settings, checkpoint_root, seed_dir, tmp_path):
    """The same checkpoints as a run in the bucket and as a local run."""
    import shutil

    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    settings.STAGING_CACHE_DIR = tmp_path / "stage"
    settings.EXPORT_ROOT = tmp_path / "exports"
    s3_bucket.upload_directory(seed_dir, "runs/seed")
    shutil.copytree(seed_dir, checkpoint_root / "seed")
    remote = Run.objects.create(name="remote", directory=s3_bucket.url("runs/seed"))
    local = Run.objects.create(name="local", directory=str(checkpoint_root / "seed"))
    for run in (remote, local):
        scanning.scan(run)
    return remote, local


def _ckpt(run, prefix="model.ckpt-200"):
    return Checkpoint.objects.select_related("run", "meta_source__run").get(run=run, prefix=prefix)


def _no_credentials(text: str, where: str) -> None:
    assert FAKE_SECRET not in text, f"the secret key appears in {where}"
    assert FAKE_KEY_ID not in text, f"the access key id appears in {where}"



def test_verify_of_a_bucket_checkpoint_equals_the_local_one_and_reuses_the_cache(runs, s3_bucket):
    remote, local = runs
    with storage.count_requests() as first:
        got = artifacts.verify(_ckpt(remote), output="probs")
    expected = artifacts.verify(_ckpt(local), output="probs")
    assert got["status"] == expected["status"] == Checkpoint.VERIFIED
    assert got["variables"] == expected["variables"]
    assert got["bytes_read"] == expected["bytes_read"]
    assert got["restore"]["ok"] and got["restore"]["meta"] == "model.ckpt-100.meta"
    assert got["restore"]["outputs"] == expected["restore"]["outputs"]
    assert first.get("GetObject") == 3  # .index, the data shard, the meta source's .meta

    with storage.count_requests() as second:
        again = artifacts.verify(_ckpt(remote))
    assert again["status"] == Checkpoint.VERIFIED
    assert second.get("GetObject", 0) == 0 and second.get("ListObjectsV2") == 1


def test_freeze_of_a_bucket_checkpoint_writes_the_same_graph_locally(runs, settings):
    remote, local = runs
    exported = artifacts.freeze(_ckpt(remote), outputs=["probs"])
    assert exported.verified and exported.max_abs_diff < 1e-6
    assert exported.path.startswith(str(settings.EXPORT_ROOT))
    assert os.path.isfile(exported.path)
    reference = artifacts.freeze(_ckpt(local), outputs=["probs"])
    assert exported.sha256 == reference.sha256
    assert exported.node_count == reference.node_count
    assert Export.objects.count() == 2


def test_compare_and_step_over_step_of_a_bucket_run_equal_the_local_ones(runs):
    remote, local = runs
    got = comparing.compute(_ckpt(remote, "model.ckpt-100"), _ckpt(remote, "model.ckpt-300"))
    expected = comparing.compute(_ckpt(local, "model.ckpt-100"), _ckpt(local, "model.ckpt-300"))
    assert got.variables == expected.variables
    strip = ("elapsed_seconds", "saved_at_a", "saved_at_b", "seconds_delta")
    assert {k: v for k, v in got.summary.items() if k not in strip} == {
        k: v for k, v in expected.summary.items() if k not in strip}
    assert got.summary["changed"] > 0
    across = comparing.compute(_ckpt(remote, "model.ckpt-300"), _ckpt(local, "model.ckpt-300"))
    assert across.summary["changed"] == 0 and across.summary["compared"] == got.summary["compared"]

    steps = comparing.step_over_step(remote)
    assert steps["relative_change"] == comparing.step_over_step(local)["relative_change"]
    with storage.count_requests() as counts:
        assert comparing.step_over_step(remote)["relative_change"] == steps["relative_change"]
    assert counts.get("GetObject", 0) == 0 and counts.get("ListObjectsV2") == 1


@pytest.fixture
def damaged(runs, s3_bucket):
    """``model.ckpt-200``'s data shard in the bucket cut to half its length."""
    key = "runs/seed/model.ckpt-200.data-00000-of-00001"
    body = s3_bucket.get(key)
    s3_bucket.put(key, body[: len(body) // 2])
    remote, _ = runs
    return remote


@pytest.mark.django_db(transaction=True)
def test_a_truncated_shard_in_the_bucket_fails_the_jobs_clearly(damaged, operator, client, tmp_path, settings):
    checkpoint = _ckpt(damaged)
    verify = jobs.start(Job.RESTORE, run=damaged, checkpoint=checkpoint, params={})
    freeze = jobs.start(Job.FREEZE, run=damaged, checkpoint=checkpoint, params={"outputs": ["probs"]})
    worker = LiveWorker(burst=True, log_path=tmp_path / "worker.log",
                        STAGING_CACHE_DIR=str(settings.STAGING_CACHE_DIR)).start()
    try:
        assert worker.wait(240) == 0
    finally:
        worker.stop()
    verify.refresh_from_db()
    freeze.refresh_from_db()
    checkpoint.refresh_from_db()
    # Read back as TensorFlow reads a damaged local file: a verdict, with its message.
    assert verify.status == Job.FINISHED, (verify.error, verify.traceback)
    assert checkpoint.status == Checkpoint.CORRUPT, checkpoint.verification
    assert checkpoint.verification["message"]
    assert freeze.status == Job.FAILED
    assert freeze.error and "Traceback" not in freeze.error
    assert not Export.objects.exists()
    assert str(settings.STAGING_CACHE_DIR) not in checkpoint.verification["message"] + freeze.error
    assert "model.ckpt-200" in checkpoint.verification["message"] and "model.ckpt-200" in freeze.error
    client.force_login(operator)
    for job in (verify, freeze):
        response = client.get(job.get_absolute_url())
        assert response.status_code == 200
        _no_credentials(response.content.decode(), f"the page of job #{job.pk}")
        record = repr(Job.objects.filter(pk=job.pk).values().get())
        _no_credentials(record, f"the record of job #{job.pk}")
    _no_credentials((tmp_path / "worker.log").read_text(errors="replace"), "the worker log")


def test_a_missing_object_fails_the_export_with_its_url(runs, s3_bucket):
    remote, _ = runs
    checkpoint = _ckpt(remote)
    s3_bucket.delete("runs/seed/model.ckpt-200.index")
    from persistence.freeze import FreezeError

    with pytest.raises(FreezeError, match="model.ckpt-200.index") as raised:
        artifacts.freeze(checkpoint, outputs=["probs"])
    _no_credentials(str(raised.value), "the error")


@pytest.mark.django_db(transaction=True)
def test_the_freeze_page_of_a_bucket_checkpoint_suggests_outputs_and_starts_a_job(runs, operator, client):
    remote, _ = runs
    client.force_login(operator)
    checkpoint = _ckpt(remote)
    url = reverse("checkpoint-freeze", args=[remote.name, checkpoint.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert 'value="probs"' in page.content.decode()
    response = client.post(url, {"kind": "frozen_pb", "outputs": "probs"})
    assert response.status_code == 302
    assert Job.objects.filter(kind=Job.FREEZE, checkpoint=checkpoint).count() == 1
    verify = client.post(reverse("checkpoint-verify", args=[remote.name, checkpoint.pk]), follow=True)
    assert verify.status_code == 200
    assert Job.objects.filter(kind=Job.RESTORE, checkpoint=checkpoint).count() == 1
