"""``gs://`` runs through the same storage layer, against a real GCS-compatible server on loopback.

Real TensorFlow checkpoints are uploaded to the emulator (``tests/gcs_server.py``) and scanned
through ``persistence.storage``; scans are compared with the local scan of the very same files.
Conditional writes use GCS generations, which play the part of S3's ETags.
"""

from __future__ import annotations

import os

import pytest

from persistence import discovery, storage
from tests.checkpoint_factory import make_seed_run

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    make_seed_run(directory, steps=(100, 200, 300))
    return directory


def _summary(result: discovery.ScanResult) -> list:
    return [(c.prefix, c.step, c.status, c.format, [f.name for f in c.files], c.size_bytes, c.meta_source,
             [(v.name, v.shape, v.dtype) for v in c.variables]) for c in result.checkpoints] + [
        [(s.name, s.latest, s.all_prefixes) for s in result.state_files]]


def test_gs_urls_parse_with_gcs_bucket_names_and_keep_the_refusals():
    assert str(storage.parse_url("gs://ml_bucket-1/runs/a/")) == "gs://ml_bucket-1/runs/a"
    assert storage.resolve_inside("gs://b-1/runs/x", ["gs://b-1/runs"]) == "gs://b-1/runs/x"
    for bad in ("gs://b-1/runs/../x", "gs://key:secret@b-1/runs", "gs://b-1/a%2Fb", "ftp://b-1/x"):
        with pytest.raises(storage.OutsideRoots):
            storage.parse_url(bad)
    with pytest.raises(storage.OutsideRoots):  # same bucket name, other scheme
        storage.resolve_inside("s3://b-1/runs/x", ["gs://b-1/runs"])
    with pytest.raises(storage.OutsideRoots):  # underscores are GCS-only
        storage.parse_url("s3://ml_bucket/x")


def test_seed_run_in_a_gcs_bucket_scans_like_the_local_directory(seed_dir, gcs_bucket):
    gcs_bucket.upload_directory(seed_dir, "runs/seed")
    gcs_bucket.put("runs/seed/deeper/model.ckpt-999.index", b"not listed: below the run")
    url = gcs_bucket.url("runs/seed")
    local = discovery.scan_directory(str(seed_dir))
    remote = discovery.scan_directory(url)
    assert _summary(remote) == _summary(local)
    assert all(c.files[0].etag for c in remote.checkpoints)  # generations fingerprint them

    # A rescan that knows every fingerprint reads no index: LIST only.
    known = {c.prefix: c.fingerprint for c in remote.checkpoints}
    with storage.count_requests() as again:
        rescan = discovery.scan_directory(url, known=known)
    assert all(c.unchanged for c in rescan.checkpoints)
    assert set(again) <= {"ListObjects", "GetObject"} and again["ListObjects"] == 1
    assert again.get("GetObject", 0) == len(remote.state_files)  # state files only, read whole

    # A replaced object gets a new generation: its checkpoint is read again, the others are not.
    gcs_bucket.put("runs/seed/model.ckpt-300.index", (seed_dir / "model.ckpt-300.index").read_bytes())
    changed = discovery.scan_directory(url, known=known)
    assert [c.prefix for c in changed.checkpoints if not c.unchanged] == ["model.ckpt-300"]


def test_reads_ranges_heads_and_downloads(gcs_bucket, tmp_path):
    gcs_bucket.put("runs/a/blob", bytes(range(256)) * 40)
    url = gcs_bucket.url("runs/a/blob")
    gcs = storage.storage_for(url)
    assert gcs.read_range(url, 10, 20) == bytes(range(10, 20))
    entry = gcs.head(url)
    assert entry.size == 10240 and entry.etag and entry.name == "blob"
    assert gcs.head(gcs_bucket.url("runs/a/nothing")) is None
    many = gcs.read_many([url, gcs_bucket.url("runs/a/nothing")])
    assert many[url] == bytes(range(256)) * 40
    assert isinstance(many[gcs_bucket.url("runs/a/nothing")], FileNotFoundError)
    with pytest.raises(storage.StorageError):
        gcs.read_bytes(url, limit=100)

    target = tmp_path / "copy"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        assert gcs.download(url, fd, size=entry.size, etag=entry.etag, part_size=4096) == 10240
    finally:
        os.close(fd)
    assert target.read_bytes() == bytes(range(256)) * 40

    gcs_bucket.put("runs/a/blob", b"replaced")  # a new generation: the listed one is gone
    fd = os.open(tmp_path / "stale", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises((storage.StorageError, FileNotFoundError)):
            gcs.download(url, fd, size=entry.size, etag=entry.etag, part_size=4096)
    finally:
        os.close(fd)


def test_conditional_puts_use_generations(gcs_bucket):
    url = gcs_bucket.url("runs/a/checkpoint")
    gcs = storage.storage_for(url)
    first = gcs.put_bytes(url, b"one", if_absent=True)
    assert first and gcs.head(url).etag == first
    with pytest.raises(storage.PreconditionFailed):
        gcs.put_bytes(url, b"two", if_absent=True)
    second = gcs.put_bytes(url, b"two", if_match=first)
    assert second != first and gcs_bucket.get("runs/a/checkpoint") == b"two"
    with pytest.raises(storage.PreconditionFailed):  # a writer that read "one" lost the race
        gcs.put_bytes(url, b"three", if_match=first)
    assert gcs_bucket.get("runs/a/checkpoint") == b"two"


def test_copy_and_delete_many(gcs_bucket, tmp_path):
    gcs_bucket.put("runs/a/x", b"x")
    gcs = storage.storage_for(gcs_bucket.url())
    gcs.copy(gcs_bucket.url("runs/a/x"), gcs_bucket.url("runs/b/x"))
    local = tmp_path / "f"
    local.write_bytes(b"uploaded")
    gcs.upload(local, gcs_bucket.url("runs/b/f"))
    assert gcs_bucket.keys("runs") == ["runs/a/x", "runs/b/f", "runs/b/x"]
    with pytest.raises(FileNotFoundError):
        gcs.copy(gcs_bucket.url("runs/a/missing"), gcs_bucket.url("runs/b/y"))
    failed = gcs.delete_many([gcs_bucket.url("runs/a/x"), gcs_bucket.url("runs/b/x"),
                              gcs_bucket.url("runs/a/never-there")])
    assert failed == {}
    assert gcs_bucket.keys("runs") == ["runs/b/f"]


def test_a_signed_url_without_signing_credentials_is_refused_clearly(gcs_bucket):
    gcs_bucket.put("runs/a/x", b"x")
    gcs = storage.storage_for(gcs_bucket.url())
    with pytest.raises(storage.StorageError, match="cannot sign"):
        gcs.presigned_url(gcs_bucket.url("runs/a/x"))


def test_a_missing_bucket_is_an_error_not_an_empty_run(gcs_env):
    with pytest.raises(storage.StorageError):
        discovery.list_entries("gs://no-such-bucket-here/runs/x")
