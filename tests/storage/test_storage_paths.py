"""The storage layer's path rules and reads, against a real S3-compatible server (no TensorFlow)."""

from __future__ import annotations

import pytest

from persistence import storage
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

ROOTS = ["s3://ckpt-bucket/runs"]


@pytest.mark.parametrize("url", [
    "s3://ckpt-bucket/runs/../other",            # parent reference
    "s3://ckpt-bucket/runs/a/../../x",
    "s3://ckpt-bucket/runs/%2e%2e/x",            # encoded parent reference
    "s3://ckpt-bucket/runs%2F..%2Fother",        # encoded separators
    "s3://ckpt-bucket/runs/a%2fb",
    "s3://ckpt-bucket/runs\\..\\x",              # backslashes
    "s3://ckpt-bucket/runs//a",                  # empty segment
    "s3://ckpt-bucket/runs/./a",
    "s3://other-bucket/runs/a",                  # another bucket
    "s3://ckpt-bucket/runsX/a",                  # a sibling prefix sharing the root's first letters
    "s3://ckpt-bucket/other/a",
    "s3://ckpt-bucket",                          # the bucket above the root
    "s3://key:secret@ckpt-bucket/runs/a",        # credentials in the URL
    "s3://ckpt-bucket:9000/runs/a",
    "s3://ckpt-bucket/runs/a?versionId=1",
    "s3://ckpt-bucket/runs/a#frag",
    "s3://ckpt-bucket/runs/a\x00b",
    "gs://ckpt-bucket/runs/a",                   # another scheme
    "s3://Bad_Bucket/runs/a",
    "http://ckpt-bucket/runs/a",
])
def test_url_outside_the_root_is_refused(url):
    with pytest.raises(storage.OutsideRoots):
        storage.resolve_inside(url, ROOTS)


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://ckpt-bucket/runs", "s3://ckpt-bucket/runs"),
    ("s3://ckpt-bucket/runs/", "s3://ckpt-bucket/runs"),
    ("s3://ckpt-bucket/runs/a", "s3://ckpt-bucket/runs/a"),
    ("S3://ckpt-bucket/runs/a/b/", "s3://ckpt-bucket/runs/a/b"),
    ("s3://ckpt-bucket/runs/a..b", "s3://ckpt-bucket/runs/a..b"),  # dots inside a name are a name
])
def test_url_inside_the_root_is_canonical(url, expected):
    assert storage.resolve_inside(url, ROOTS) == expected


def test_local_roots_never_admit_a_url():
    with pytest.raises(storage.OutsideRoots):
        storage.resolve_inside("s3://ckpt-bucket/runs/a", ["/srv/checkpoints", "s3:"])


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "..\\x"])
def test_join_takes_base_names_only(name):
    with pytest.raises(storage.OutsideRoots):
        storage.join("s3://ckpt-bucket/runs/a", name)


def test_listing_is_one_request_and_carries_fingerprints(s3_bucket):
    for i in range(3):
        s3_bucket.put(f"runs/a/file-{i}", b"x" * i)
    s3_bucket.put("runs/a/below/deep", b"not listed")
    s3_bucket.put("runs/ab/neighbour", b"not listed")
    store = storage.storage_for(s3_bucket.url("runs/a"))
    with storage.count_requests() as counts:
        entries = store.list(s3_bucket.url("runs/a"))
    assert counts == {"ListObjectsV2": 1}
    assert [(e.name, e.size) for e in entries] == [("file-0", 0), ("file-1", 1), ("file-2", 2)]
    assert all(len(e.etag) == 32 and e.mtime_ns > 0 for e in entries)
    assert entries[1].path == s3_bucket.url("runs/a/file-1")


def test_listing_pages_are_one_request_per_thousand_keys(s3_bucket):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3_bucket.put(f"runs/big/k{i:05d}", b""), range(2500)))
    with storage.count_requests() as counts:
        entries = storage.storage_for(s3_bucket.url()).list(s3_bucket.url("runs/big"))
    assert len(entries) == 2500
    assert counts == {"ListObjectsV2": 3}


def test_reads_whole_ranges_many_and_streams_with_one_get_each(s3_bucket):
    s3_bucket.put("runs/a/one", b"0123456789")
    s3_bucket.put("runs/a/two", b"abc")
    store = storage.storage_for(s3_bucket.url())
    with storage.count_requests() as counts:
        assert store.read_bytes(s3_bucket.url("runs/a/one")) == b"0123456789"
        assert store.read_range(s3_bucket.url("runs/a/one"), 2, 5) == b"234"
        many = store.read_many([s3_bucket.url("runs/a/one"), s3_bucket.url("runs/a/two"), s3_bucket.url("runs/a/no")])
    assert counts == {"GetObject": 5}
    assert many[s3_bucket.url("runs/a/two")] == b"abc"
    assert isinstance(many[s3_bucket.url("runs/a/no")], FileNotFoundError)
    with store.open(s3_bucket.url("runs/a/one")) as handle:
        assert handle.read() == b"0123456789"
    with pytest.raises(storage.StorageError, match="larger than"):
        store.read_bytes(s3_bucket.url("runs/a/one"), limit=4)


def test_errors_name_the_url_never_the_credentials(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")  # a new client, refused by nobody
    store = storage.storage_for(s3_bucket.url())
    messages = []
    for call in (lambda: store.list("s3://no-such-bucket-here/x"),
                 lambda: store.read_bytes("s3://no-such-bucket-here/x/y"),
                 lambda: store.read_range(s3_bucket.url("runs/none"), 0, 4)):
        with pytest.raises(OSError) as raised:
            call()
        messages.append(str(raised.value) + repr(raised.value) + repr(raised.value.__cause__))
    for message in messages:
        assert FAKE_SECRET not in message and FAKE_KEY_ID not in message
        assert "AKIAWRONG" not in message
    assert "no-such-bucket-here" in messages[0]
