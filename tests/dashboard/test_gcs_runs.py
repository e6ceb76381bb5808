"""Runs in a ``gs://`` bucket: tracked, scanned and verified like runs in S3 and on a local disk.

Against a real GCS-compatible server on loopback (``tests/gcs_server.py``), with real TensorFlow
checkpoints: the rows and the verification must equal those of the same files in a local run.
"""

from __future__ import annotations

import shutil

import pytest
from django.urls import reverse

from dashboard import artifacts, scanning
from dashboard.models import Checkpoint, Run
from persistence import storage
from tests import checkpoint_factory as factory

pytestmark = [pytest.mark.tf]


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=(100, 200, 300))
    return directory


@pytest.fixture
def gcs_root(gcs_bucket, settings, checkpoint_root, tmp_path):
    settings.CHECKPOINT_OBJECT_ROOTS = [gcs_bucket.url("runs")]
    settings.STAGING_CACHE_DIR = tmp_path / "stage"
    return gcs_bucket


@pytest.mark.django_db
def test_track_scan_and_verify_a_run_in_a_gcs_bucket(client, operator, gcs_root, checkpoint_root, seed_dir):
    gcs_root.upload_directory(seed_dir, "runs/seed")
    client.force_login(operator)
    assert gcs_root.url("runs") in client.get(reverse("run-new")).content.decode()
    response = client.post(reverse("run-new"), {"directory": gcs_root.url("runs/seed/"), "name": "seed"})
    assert response.status_code == 302, response.content.decode()[:2000]
    run = Run.objects.get(name="seed")
    assert run.directory == gcs_root.url("runs/seed")

    shutil.copytree(seed_dir, checkpoint_root / "seed")
    local = Run.objects.create(name="local", directory=str(checkpoint_root / "seed"))
    scanning.scan(run)
    scanning.scan(local)

    def rows(of):
        return {c.prefix: (c.step, c.status, c.size_bytes, c.variables, c.latest_in,
                           c.meta_source.prefix if c.meta_source else None) for c in of.checkpoints.all()}

    assert rows(run) == rows(local)
    assert rows(run)["model.ckpt-300"][4] == ["checkpoint"]

    # Unchanged: the rescan is one LIST, no GET.
    with storage.count_requests() as again:
        counts = scanning.scan(run)
    assert counts["unchanged_directory"] and again == {"ListObjects": 1}

    remote_ckpt = Checkpoint.objects.select_related("run").get(run=run, prefix="model.ckpt-200")
    local_ckpt = Checkpoint.objects.select_related("run").get(run=local, prefix="model.ckpt-200")
    got = artifacts.verify(remote_ckpt, output="probs")
    expected = artifacts.verify(local_ckpt, output="probs")
    assert got["status"] == expected["status"] == Checkpoint.VERIFIED
    assert got["variables"] == expected["variables"]
    assert got["restore"]["outputs"] == expected["restore"]["outputs"]

    page = client.get(reverse("run", args=[run.name])).content.decode()
    assert "model.ckpt-300" in page and gcs_root.url("runs/seed") in page


@pytest.mark.django_db
def test_tracking_a_gcs_prefix_outside_the_roots_or_empty_is_refused(client, operator, gcs_root):
    client.force_login(operator)
    for url in (gcs_root.url("elsewhere/seed"), gcs_root.url("runs/../x"), gcs_root.url("runs/empty"),
                f"s3://{gcs_root.name}/runs/seed"):
        response = client.post(reverse("run-new"), {"directory": url, "name": "x"})
        assert response.status_code == 200, url
    assert not Run.objects.exists()
