"""Writing to a bucket through ``persistence.storage``: conditional puts, copies, batch deletes,
presigned URLs, all against the loopback S3 server through the real client stack."""

from __future__ import annotations

import urllib.request

import pytest

from persistence import storage
from tests.s3_server import FAKE_SECRET


def _get(bucket, key: str) -> bytes:
    return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def test_a_put_conditional_on_an_old_etag_changes_nothing(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    first = store.put_bytes(s3_bucket.url("run/checkpoint"), b"one")
    # A trainer rewrites the state file after we read it.
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="run/checkpoint", Body=b"trainer")
    with pytest.raises(storage.PreconditionFailed):
        store.put_bytes(s3_bucket.url("run/checkpoint"), b"ours", if_match=first)
    assert _get(s3_bucket, "run/checkpoint") == b"trainer"
    current = store.head(s3_bucket.url("run/checkpoint")).etag
    assert store.put_bytes(s3_bucket.url("run/checkpoint"), b"ours", if_match=current)
    assert _get(s3_bucket, "run/checkpoint") == b"ours"


def test_a_put_only_if_absent_never_replaces(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    store.put_bytes(s3_bucket.url("run/a"), b"first", if_absent=True)
    with pytest.raises(storage.PreconditionFailed):
        store.put_bytes(s3_bucket.url("run/a"), b"second", if_absent=True)
    assert _get(s3_bucket, "run/a") == b"first"


def test_head_of_a_missing_object_is_none_and_of_a_present_one_its_listing(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    assert store.head(s3_bucket.url("run/nothing")) is None
    etag = store.put_bytes(s3_bucket.url("run/x"), b"12345")
    entry = store.head(s3_bucket.url("run/x"))
    assert (entry.name, entry.size, entry.etag) == ("x", 5, etag)
    assert [e.etag for e in store.list(s3_bucket.url("run"))] == [etag]


def test_batch_delete_removes_exactly_the_keys_named_in_chunks_of_a_thousand(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    for i in range(1005):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"run/f{i:04d}", Body=b"x")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="run/keep", Body=b"k")
    doomed = [s3_bucket.url(f"run/f{i:04d}") for i in range(1005)] + [s3_bucket.url("run/already-gone")]
    with storage.count_requests() as counts:
        failed = store.delete_many(doomed)
    assert failed == {}
    assert counts.get("DeleteObjects") == 2
    assert [e.name for e in store.list(s3_bucket.url("run"))] == ["keep"]


def test_copy_and_upload_write_the_same_bytes(s3_bucket, tmp_path):
    store = storage.storage_for(s3_bucket.url("run"))
    local = tmp_path / "model.pb"
    local.write_bytes(b"\x00graph" * 1000)
    store.upload(local, s3_bucket.url("exports/.tmp-1"))
    store.copy(s3_bucket.url("exports/.tmp-1"), s3_bucket.url("exports/model.pb"))
    assert _get(s3_bucket, "exports/model.pb") == local.read_bytes()
    with pytest.raises(FileNotFoundError):
        store.copy(s3_bucket.url("exports/none"), s3_bucket.url("exports/x"))


def test_a_presigned_url_downloads_without_credentials_and_does_not_carry_the_secret(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    store.put_bytes(s3_bucket.url("exports/model.pb"), b"frozen graph bytes")
    url = store.presigned_url(s3_bucket.url("exports/model.pb"), expires=60, filename="model.pb")
    assert FAKE_SECRET not in url
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"frozen graph bytes"
        assert "model.pb" in answer.headers.get("Content-Disposition", "")
