"""Exports into a bucket (``EXPORT_ROOT=s3://...``) against the loopback S3 server, real TensorFlow.

A freeze is written and verified locally, uploaded under ``.tmp/`` and copied to its final key
only when whole: the tests look for leftovers at every step, kill a worker between the upload and
the copy, and hand a changed file to the copy. Downloads redirect to a presigned URL (followed here
to the bytes) or stream with ranges and ETags; credentials never show.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.urls import reverse

from dashboard import artifacts, export_storage, jobs, rechecking, serving
from dashboard.models import Export, Job
from persistence import exportstore, storage
from tests.dashboard import test_freeze_verify_commands as commands
from tests.live import LiveWorker, wait_for
from tests.s3_server import FAKE_SECRET

pytestmark = [pytest.mark.tf]

demo_template, demo = commands.demo_template, commands.demo
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def bucket_exports(s3_bucket, settings, tmp_path):
    settings.EXPORT_ROOT = s3_bucket.url("exports")
    settings.EXPORT_WORK_DIR = tmp_path / "export-work"
    settings.EXPORT_DOWNLOADS = "redirect"
    return s3_bucket


def _no_secret(text: str, where: str) -> None:
    assert FAKE_SECRET not in text, f"the secret key appears in {where}"


def _work_leftovers(settings) -> list[str]:
    work = Path(settings.EXPORT_WORK_DIR)
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []


def _freeze(demo, kind=Export.FROZEN_PB):
    return artifacts.freeze(demo.checkpoints.get(step=50), outputs=["probs"], kind=kind)


def _download(client, export, **headers):
    return client.get(reverse("export-download", args=[export.pk]), **headers)


def _body(response) -> bytes:
    return b"".join(response.streaming_content)


def _reconcile_until_failed(job: Job) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs.reconcile_jobs()
        job.refresh_from_db()
        if job.status != Job.RUNNING:
            break
        time.sleep(0.5)
    assert job.status == Job.FAILED, (job.status, job.error)


@pytest.mark.django_db(transaction=True)
def test_a_freeze_job_puts_the_verified_pb_at_its_final_key_and_leaves_no_temporary_keys(
        demo, bucket_exports, settings, tmp_path, operator, client):
    checkpoint = demo.checkpoints.get(step=50)
    job = jobs.start(Job.FREEZE, run=demo, checkpoint=checkpoint, params={"outputs": ["probs"]})
    worker = LiveWorker(burst=True, log_path=tmp_path / "worker.log",
                        EXPORT_WORK_DIR=str(settings.EXPORT_WORK_DIR)).start()
    try:
        assert worker.wait(240) == 0
    finally:
        worker.stop()
    job.refresh_from_db()
    assert job.status == Job.FINISHED, (job.error, (tmp_path / "worker.log").read_text()[-3000:])
    export = Export.objects.get()
    assert export.path == bucket_exports.url("exports/demo/50/probs.pb") and export.verified
    assert bucket_exports.keys() == ["exports/demo/50/probs.pb"]  # nothing under exports/.tmp/
    data = bucket_exports.get("exports/demo/50/probs.pb")
    assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.size_bytes
    assert export.verification["objects"][0][:3] == ["", False, len(data)]
    assert _work_leftovers(settings) == []
    # The same graph as a local freeze of the same checkpoint writes.
    settings.EXPORT_ROOT = tmp_path / "local-exports"
    assert _freeze(demo).sha256 == export.sha256

    client.force_login(operator)
    for url in (job.get_absolute_url(), export.get_absolute_url(), reverse("exports")):
        page = client.get(url)
        assert page.status_code == 200
        _no_secret(page.content.decode(), url)
    _no_secret(repr(Job.objects.filter(pk=job.pk).values().get()), "the job record")
    _no_secret((tmp_path / "worker.log").read_text(errors="replace"), "the worker log")


@pytest.mark.django_db
def test_the_download_redirects_to_a_short_lived_url_that_serves_the_exported_bytes(demo, bucket_exports, viewer,
                                                                                   client):
    export = _freeze(demo)
    client.force_login(viewer)
    response = _download(client, export)
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(f"{os.environ['AWS_ENDPOINT_URL']}/{bucket_exports.name}/exports/demo/50/probs.pb?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query.get("X-Amz-Signature") or query.get("Signature")
    # Signed for EXPORT_DOWNLOAD_URL_SECONDS: relative (SigV4) or as the time it expires (SigV2).
    lifetime = int(query["X-Amz-Expires"]) if "X-Amz-Expires" in query else int(query["Expires"]) - time.time()
    assert 250 < lifetime <= 300
    assert "no-store" in response["Cache-Control"]
    _no_secret(location, "the redirect")
    with urllib.request.urlopen(location, timeout=30) as fetched:
        data = fetched.read()
        disposition = fetched.headers.get("Content-Disposition", "")
    assert hashlib.sha256(data).hexdigest() == export.sha256
    assert "demo-step50-probs.pb" in disposition
    assert _download(client, export, HTTP_IF_NONE_MATCH=f'"{export.sha256}"').status_code == 304
    api = client.get(f"/api/v1/exports/{export.pk}/download")  # the API answers like the page
    assert api.status_code == 302 and api["Location"].split("?")[0] == location.split("?")[0]


@pytest.mark.django_db
def test_stream_mode_serves_ranges_and_answers_304_to_the_etag(demo, bucket_exports, viewer, client, settings):
    settings.EXPORT_DOWNLOADS = "stream"
    export = _freeze(demo)
    data = bucket_exports.get("exports/demo/50/probs.pb")
    size = len(data)
    client.force_login(viewer)
    whole = _download(client, export)
    assert whole.status_code == 200 and _body(whole) == data
    assert whole["ETag"] == f'"{export.sha256}"' and whole["Content-Length"] == str(size)
    assert whole["Content-Disposition"] == 'attachment; filename="demo-step50-probs.pb"'
    for header, (first, last) in {"bytes=10-99": (10, 99), "bytes=-7": (size - 7, size - 1),
                                  f"bytes=5-{size * 3}": (5, size - 1)}.items():
        part = _download(client, export, HTTP_RANGE=header)
        assert part.status_code == 206, header
        assert _body(part) == data[first:last + 1], header
        assert part["Content-Range"] == f"bytes {first}-{last}/{size}", header
    assert _download(client, export, HTTP_RANGE=f"bytes={size}-").status_code == 416
    stale = _download(client, export, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"other"')
    assert stale.status_code == 200 and len(_body(stale)) == size
    assert _download(client, export, HTTP_IF_NONE_MATCH=f'"{export.sha256}"').status_code == 304


@pytest.mark.django_db
def test_a_savedmodel_in_a_bucket_downloads_as_the_archive_a_local_export_streams(demo, bucket_exports, viewer,
                                                                                 client, settings, tmp_path):
    export = _freeze(demo, Export.SAVED_MODEL)
    assert export.verified
    keys = bucket_exports.keys()
    assert "exports/demo/50/probs.savedmodel/saved_model.pb" in keys
    assert not [k for k in keys if "/.tmp/" in k or not k.startswith("exports/demo/50/probs.savedmodel/")]
    client.force_login(viewer)
    for mode in ("redirect", "stream"):  # several objects: streamed either way
        settings.EXPORT_DOWNLOADS = mode
        response = _download(client, export)
        assert response.status_code == 200
        data = _body(response)
        assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.size_bytes
        assert response["Content-Disposition"] == 'attachment; filename="demo-step50-probs.tar"'
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert "probs.savedmodel/saved_model.pb" in names
    middle = _download(client, export, HTTP_RANGE="bytes=1000-70000")
    assert middle.status_code == 206 and _body(middle) == data[1000:70001]
    # What a local export of the same directory would stream, byte for byte.
    with export_storage.staged_directory(export) as local:
        from persistence.tarball import archive_layout

        assert archive_layout(local, top="probs.savedmodel").sha256() == export.sha256


@pytest.mark.django_db
def test_publishing_a_savedmodel_from_the_bucket_stages_it_for_tf_serving(demo, bucket_exports, maintainer, settings):
    export = _freeze(demo, Export.SAVED_MODEL)
    target = serving.create_target(demo, "antispam", actor=maintainer)
    assert serving.publish(target, export, actor=maintainer) == 50
    version = Path(target.model_path) / "50"
    assert (version / "saved_model.pb").read_bytes() == bucket_exports.get(
        "exports/demo/50/probs.savedmodel/saved_model.pb")
    assert _work_leftovers(settings) == []


@pytest.mark.django_db
def test_a_replaced_object_is_not_served_until_a_recheck_finds_the_verified_bytes(demo, bucket_exports, viewer,
                                                                                 operator, client, settings):
    settings.EXPORT_DOWNLOADS = "stream"
    export = _freeze(demo)
    key = "exports/demo/50/probs.pb"
    original = bucket_exports.get(key)
    bucket_exports.put(key, original[:-1] + bytes([original[-1] ^ 1]))  # same size, other bytes
    client.force_login(viewer)
    refused = _download(client, export)
    assert refused.status_code == 404 and "changed in the bucket" in refused.content.decode()
    assert rechecking.recheck_export(export, actor=operator) is False
    assert _download(client, export).status_code == 404

    bucket_exports.put(key, original)  # the same bytes again (a new ETag for all the client knows)
    assert rechecking.recheck_export(export, actor=operator) is True
    export.refresh_from_db()
    assert _body(_download(client, export)) == original
    bucket_exports.delete(key)
    gone = _download(client, export)
    assert gone.status_code == 404 and "missing from the bucket" in gone.content.decode()


@pytest.mark.django_db
def test_an_export_row_naming_an_object_outside_the_export_root_is_refused(demo, bucket_exports, viewer, client,
                                                                          settings):
    export = _freeze(demo)
    bucket_exports.put("secrets/model.pb", b"not yours")
    client.force_login(viewer)
    for path in (bucket_exports.url("secrets/model.pb"), bucket_exports.url("exports/../secrets/model.pb"),
                 "s3://another-bucket/exports/demo/50/probs.pb", "/etc/passwd"):
        Export.objects.filter(pk=export.pk).update(path=path)
        response = _download(client, export)
        assert response.status_code == 403, path
        assert "Location" not in response


@pytest.mark.django_db
def test_an_export_that_changed_or_did_not_verify_is_never_copied_in(demo, bucket_exports, tmp_path):
    local = tmp_path / "probs.pb"
    local.write_bytes(b"frozen graph bytes")
    url = bucket_exports.url("exports/demo/50/probs.pb")
    store = storage.storage_for(url)
    with pytest.raises(exportstore.PublishError, match="changed after it was verified"):
        exportstore.publish(store, local, url, temp_dir=bucket_exports.url("exports/.tmp"), owner="job1",
                            sha256=hashlib.sha256(b"what was verified").hexdigest())
    from persistence.freeze import FreezeError

    with pytest.raises(FreezeError, match="did not verify"):
        export_storage.publish(local, url, {"verified": False, "max_abs_diff": 0.5,
                                            "sha256": hashlib.sha256(local.read_bytes()).hexdigest()}, owner="job1")
    assert bucket_exports.keys() == []
    assert not Export.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_upload_and_copy_leaves_nothing_at_the_final_key(demo, bucket_exports, settings,
                                                                                 tmp_path):
    checkpoint = demo.checkpoints.get(step=50)
    worker = LiveWorker(log_path=tmp_path / "worker.log", EXPORT_WORK_DIR=str(settings.EXPORT_WORK_DIR),
                        EXPORT_PUBLISH_DELAY_SECONDS="60").start()
    try:
        job = jobs.start(Job.FREEZE, run=demo, checkpoint=checkpoint, params={"outputs": ["probs"]})
        temps = wait_for(lambda: bucket_exports.keys("exports/.tmp/"), 180, interval=0.1,
                         what="the freeze's temporary objects")
        horses = worker.horse_pids()
        assert horses, "no work horse to kill"
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        _reconcile_until_failed(job)
    finally:
        worker.stop()
    assert "exports/demo/50/probs.pb" not in bucket_exports.keys()
    assert bucket_exports.keys() == temps and temps[0].startswith(f"exports/.tmp/job{job.pk}~")
    assert not Export.objects.exists()

    # The next export removes the dead writer's temporary objects and finishes.
    export = _freeze(demo)
    assert export.verification["stale_temp_objects_removed"] == [t.rsplit("/", 1)[1] for t in temps]
    assert bucket_exports.keys() == ["exports/demo/50/probs.pb"]
    assert _work_leftovers(settings) == []


PRINT_EXPORTS = ("import json, django; from django.conf import settings; django.setup(); "
                 "print(json.dumps([str(settings.EXPORT_ROOT), settings.EXPORT_DOWNLOADS]))")


def _settings(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "VAR_DIR": str(tmp_path / "var"),
                   "DEBUG": "1", **env}
    return subprocess.run([sys.executable, "-c", PRINT_EXPORTS], cwd=BASE_DIR, env=environment, capture_output=True,
                          text=True, timeout=120)


def test_a_bucket_export_root_is_kept_as_its_url_and_defaults_to_redirected_downloads(tmp_path):
    done = _settings(tmp_path, EXPORT_ROOT="S3://ml-bucket/exports/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["s3://ml-bucket/exports", "redirect"]
    done = _settings(tmp_path, EXPORT_ROOT="s3://ml-bucket/exports", EXPORT_DOWNLOADS="stream")
    assert json.loads(done.stdout.strip().splitlines()[-1])[1] == "stream"


@pytest.mark.parametrize("bad", ["s3://AKIA:supersecretvalue@ml-bucket/exports", "s3://ml-bucket/exports/../x",
                                 "s3://ml-bucket/ex%2Fports", "s3://ml-bucket:9000/exports", "gs://ml-bucket/x"])
def test_a_malformed_bucket_export_root_stops_the_start(tmp_path, bad):
    done = _settings(tmp_path, EXPORT_ROOT=bad)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and "EXPORT_ROOT" in done.stderr
    assert "supersecretvalue" not in done.stderr


def test_an_unknown_download_mode_stops_the_start(tmp_path):
    done = _settings(tmp_path, EXPORT_DOWNLOADS="proxy")
    assert done.returncode != 0 and "EXPORT_DOWNLOADS" in done.stderr


@pytest.mark.django_db
def test_an_export_removes_only_temporary_keys_of_writers_that_have_ended(demo, bucket_exports):
    checkpoint = demo.checkpoints.get(step=50)
    running = Job.objects.create(kind=Job.FREEZE, run=demo, checkpoint=checkpoint, status=Job.RUNNING,
                                 params={"outputs": ["other"]})
    ended = Job.objects.create(kind=Job.FREEZE, run=demo, checkpoint=checkpoint, status=Job.FAILED)
    live = f"exports/.tmp/job{running.pk}~{'a' * 32}~0"
    dead = f"exports/.tmp/job{ended.pk}~{'b' * 32}~0"
    unowned = "exports/.tmp/something-else"  # no writer named, and new: kept
    for key in (live, dead, unowned):
        bucket_exports.put(key, b"partial upload")
    export = _freeze(demo)
    assert export.verification["stale_temp_objects_removed"] == [dead.rsplit("/", 1)[1]]
    assert bucket_exports.keys() == sorted(["exports/demo/50/probs.pb", live, unowned])


@pytest.mark.django_db
def test_a_new_savedmodel_export_removes_strays_only_inside_its_own_directory(demo, bucket_exports):
    frozen = _freeze(demo)
    first = _freeze(demo, Export.SAVED_MODEL)
    stray = "exports/demo/50/probs.savedmodel/variables/left-by-an-older-export"
    neighbours = ["exports/demo/50/probs.savedmodel-notes/readme", "exports/demo/50/probs.savedmodelx",
                  "exports/demo/probs.savedmodel/variables/x"]
    for key in (stray, *neighbours):
        bucket_exports.put(key, b"x")
    again = _freeze(demo, Export.SAVED_MODEL)
    assert again.pk == first.pk and again.verification["stray_objects_removed"] == [bucket_exports.url(stray)]
    keys = bucket_exports.keys()
    assert stray not in keys and all(k in keys for k in neighbours)
    assert "exports/demo/50/probs.pb" in keys and Export.objects.filter(pk=frozen.pk).exists()
    assert hashlib.sha256(bucket_exports.get("exports/demo/50/probs.pb")).hexdigest() == frozen.sha256
