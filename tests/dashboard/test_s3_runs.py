"""Runs in a bucket: tracked, scanned and shown like local runs; what needs local files is refused.

Against the loopback S3 server (``tests/s3_server.py``), with real TensorFlow checkpoints uploaded
by boto3 and a real worker process for the scan jobs. Requests are counted on the client.
"""

from __future__ import annotations

import concurrent.futures
import math
import os

import pytest
from django.urls import reverse

from dashboard import scanning
from dashboard.models import Checkpoint, Job, Run
from persistence import storage
from tests import checkpoint_factory as factory
from tests.live import LiveWorker
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

pytestmark = [pytest.mark.tf]


@pytest.fixture
def s3_root(s3_bucket, settings, checkpoint_root):
    """The bucket's ``runs/`` prefix is a checkpoint root (beside the usual local one)."""
    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    return s3_bucket


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=(100, 200, 300))
    return directory


def _assert_no_credentials(text: str, where: str) -> None:
    assert FAKE_SECRET not in text, f"the secret key appears in {where}"
    assert FAKE_KEY_ID not in text, f"the access key id appears in {where}"


@pytest.mark.django_db(transaction=True)
def test_track_scan_and_browse_a_run_in_a_bucket(client, operator, s3_root, seed_dir, tmp_path, caplog):
    s3_root.upload_directory(seed_dir, "runs/seed")
    client.force_login(operator)
    new = client.get(reverse("run-new")).content.decode()
    assert s3_root.url("runs") in new
    response = client.post(reverse("run-new"), {"directory": s3_root.url("runs/seed/"), "name": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    run = Run.objects.get(name="seed")
    assert run.directory == s3_root.url("runs/seed")

    client.post(reverse("run-scan", args=[run.name]))  # registering started one too
    log = tmp_path / "worker.log"
    worker = LiveWorker(burst=True, log_path=log).start()
    try:
        assert worker.wait(120) == 0
    finally:
        worker.stop()
    scans = list(Job.objects.filter(run=run, kind=Job.SCAN))
    assert scans and all(j.status == Job.FINISHED for j in scans), [j.error for j in scans]
    job = scans[0]

    rows = {c.prefix: c for c in run.checkpoints.all()}
    assert {p for p, c in rows.items() if c.status == Checkpoint.PRESENT} == {
        f"{family}.ckpt-{step}" for family in ("model", "subset") for step in (100, 200, 300)
    }
    assert rows["model.ckpt-300"].latest_in == ["checkpoint"]
    assert rows["subset.ckpt-300"].latest_in == ["subset_checkpoint"]
    assert {v["name"] for v in rows["model.ckpt-200"].variables} == {"w", "b", "global_step"}
    assert rows["model.ckpt-200"].meta_source.prefix == "model.ckpt-100"

    pages = {
        "run": reverse("run", args=[run.name]),
        "history sorted by size": reverse("run", args=[run.name]) + "?sort=size",
        "checkpoint": rows["model.ckpt-200"].get_absolute_url(),
        "checkpoint with meta": rows["model.ckpt-100"].get_absolute_url(),
        "runs": reverse("runs"),
        "retention": reverse("run-retention", args=[run.name]),
        "prune preview": reverse("run-prune", args=[run.name]),
        "job": reverse("job", args=[job.pk]),
        "jobs": reverse("jobs"),
        "api run": f"/api/v1/runs/{run.name}",
    }
    seen = []
    for name, url in pages.items():
        page = client.get(url)
        assert page.status_code in (200, 401), (name, page.status_code)
        seen.append(page.content.decode())
        _assert_no_credentials(seen[-1], f"the {name} page")
    assert "model.ckpt-300" in seen[0] and s3_root.url("runs/seed") in seen[0]
    assert "This run is in object storage" in seen[0]
    assert "w" in seen[2] and "model.ckpt-200.data-00000-of-00001" in seen[2]

    for record in Job.objects.values_list("params", "result", "error", "message", "traceback"):
        _assert_no_credentials(repr(record), "a job record")
    _assert_no_credentials(log.read_text(errors="replace"), "the worker's log")
    _assert_no_credentials(caplog.text, "this process's log")


@pytest.mark.django_db
def test_rescan_of_an_unchanged_run_is_one_list_per_thousand_keys_and_no_get(s3_root, tmp_path):
    made = factory.make_many_tiny_checkpoints(tmp_path / "many", 520)
    names = sorted(os.listdir(made.directory))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: s3_root.put(f"runs/many/{name}", (tmp_path / "many" / name).read_bytes()), names))
    run = Run.objects.create(name="many", directory=s3_root.url("runs/many"))

    with storage.count_requests() as first:
        counts = scanning.scan(run)
    assert counts["created"] == 520
    lists = math.ceil(len(names) / 1000)
    assert first["ListObjectsV2"] == lists
    assert first["GetObject"] == 520 + 1  # every .index and the one state file

    for _ in range(2):
        with storage.count_requests() as again:
            counts = scanning.scan(run)
        assert counts["unchanged_directory"] and counts["checkpoints"] == 520
        assert again == {"ListObjectsV2": lists}

    # A trainer adds a checkpoint and rewrites the state file: only those are read.
    for name in ("model.ckpt-1.index", "model.ckpt-1.data-00000-of-00001"):
        s3_root.put(f"runs/many/{name.replace('-1.', '-9999.')}", (tmp_path / "many" / name).read_bytes())
    with storage.count_requests() as changed:
        counts = scanning.scan(run)
    assert counts["created"] == 1 and counts["updated"] == 0
    assert changed == {"ListObjectsV2": lists, "GetObject": 2}


@pytest.mark.django_db
def test_debug_logging_never_shows_the_credentials(s3_root, seed_dir, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    s3_root.upload_directory(seed_dir, "runs/seed")
    run = Run.objects.create(name="seed", directory=s3_root.url("runs/seed"))
    scanning.scan(run)
    assert run.checkpoints.count() >= 6
    _assert_no_credentials(caplog.text, "the debug log")


@pytest.mark.django_db
def test_corruption_in_a_bucket_is_recorded_as_for_a_local_run(s3_root, checkpoint_root):
    made = factory.make_seed_run(checkpoint_root / "bad", steps=(100, 200, 300))
    factory.truncate_index(f"{made.directory}/model.ckpt-200")
    factory.delete_data_shard(f"{made.directory}/model.ckpt-300")
    s3_root.upload_directory(made.directory, "runs/bad")
    remote = Run.objects.create(name="bad-remote", directory=s3_root.url("runs/bad"))
    local = Run.objects.create(name="bad-local", directory=made.directory)
    scanning.scan(remote)
    scanning.scan(local)

    def verdicts(run):
        return {c.prefix: (c.status, c.size_bytes, len(c.variables or []), [p.split(":")[0] for p in c.problems])
                for c in run.checkpoints.all()}

    assert verdicts(remote) == verdicts(local)
    statuses = {c.prefix: c.status for c in remote.checkpoints.all()}
    assert statuses["model.ckpt-200"] == Checkpoint.CORRUPT
    assert statuses["model.ckpt-300"] == Checkpoint.INCOMPLETE
    assert statuses["model.ckpt-100"] == Checkpoint.PRESENT


@pytest.mark.django_db
def test_an_unreachable_bucket_fails_the_scan_and_leaves_rows_alone(s3_root, seed_dir, caplog):
    s3_root.upload_directory(seed_dir, "runs/seed")
    run = Run.objects.create(name="seed", directory=s3_root.url("runs/seed"))
    scanning.scan(run)
    before = dict(run.checkpoints.values_list("prefix", "status"))
    for key in s3_root.keys():
        s3_root.delete(key)
    s3_root.client.delete_bucket(Bucket=s3_root.name)
    with pytest.raises(storage.StorageError) as raised:
        scanning.scan(run)
    assert "no such bucket" in str(raised.value)
    _assert_no_credentials(str(raised.value), "the scan error")
    assert dict(run.checkpoints.values_list("prefix", "status")) == before
    _assert_no_credentials(caplog.text, "the log")


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "runs/seed/../../elsewhere",
    "runs%2F..%2Felsewhere",
    "runs/seed/%2e%2e/%2e%2e/elsewhere",
    "elsewhere/seed",
    "runsx/seed",
    "",
])
def test_tracking_outside_the_root_prefix_is_refused(client, operator, s3_root, seed_dir, url):
    s3_root.upload_directory(seed_dir, "elsewhere/seed")
    client.force_login(operator)
    response = client.post(reverse("run-new"), {"directory": f"s3://{s3_root.name}/{url}", "name": "escape"})
    assert response.status_code == 200
    assert not Run.objects.filter(name="escape").exists()


@pytest.mark.django_db
def test_tracking_in_another_bucket_or_with_credentials_in_the_url_is_refused(client, operator, s3_root, s3_env):
    import boto3

    other = "other-" + s3_root.name[5:]
    boto3.client("s3").create_bucket(Bucket=other)
    client.force_login(operator)
    for url in (f"s3://{other}/runs/seed", f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{s3_root.name}/runs/seed"):
        response = client.post(reverse("run-new"), {"directory": url, "name": "escape"})
        assert response.status_code == 200
        assert not Run.objects.filter(name="escape").exists()
        html = response.content.decode()
        assert "outside the checkpoint roots" in html or "Credentials" in html
        assert FAKE_SECRET not in html.replace(url, "")


# --- what needs the files on a local disk is refused, never a 500 --------------------------------


@pytest.fixture
def s3_run(db, s3_root, seed_dir):
    s3_root.upload_directory(seed_dir, "runs/seed")
    run = Run.objects.create(name="seed", directory=s3_root.url("runs/seed"))
    scanning.scan(run)
    return run


def _ckpt(run, prefix="model.ckpt-200"):
    return run.checkpoints.get(prefix=prefix)


def test_the_api_starts_a_prune_of_a_run_in_a_bucket(s3_run, maintainer):
    from tests.api.conftest import TokenClient, token_for

    maintainer = TokenClient(token_for(maintainer, "maintainer"))
    preview = maintainer.post_json(f"/api/v1/runs/{s3_run.name}/prune-preview",
                                   {"max_to_keep": 1, "min_age_seconds": 0})
    assert preview.status_code == 200, preview.content
    response = maintainer.post_json(f"/api/v1/runs/{s3_run.name}/prune", {
        "fingerprint": preview.json()["fingerprint"], "policy": {"max_to_keep": 1, "min_age_seconds": 0},
    })
    assert response.status_code == 202, response.content
    assert Job.objects.get(kind=Job.PRUNE, run=s3_run).status == Job.QUEUED
