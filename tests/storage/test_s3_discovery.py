"""Discovery of runs in a bucket: the same code and the same verdicts as for a local directory.

Real TensorFlow checkpoints are written locally, uploaded with boto3 to the loopback S3 server,
and scanned through ``persistence.storage``; every result is compared with the local scan of the
very same files.
"""

from __future__ import annotations

import shutil

import pytest

from persistence import discovery, storage
from tests.checkpoint_factory import (
    delete_data_shard,
    make_seed_run,
    make_sharded_checkpoint,
    make_tf2_manager_run,
    truncate_index,
)

pytestmark = pytest.mark.tf


def _summary(result: discovery.ScanResult) -> dict:
    return {
        "format": result.format,
        "checkpoints": [
            (c.prefix, c.step, c.status, c.format, [f.name for f in c.files], c.size_bytes, c.has_own_meta,
             c.meta_source, [(v.name, v.shape, v.dtype, v.nbytes) for v in c.variables], c.unchanged)
            for c in result.checkpoints
        ],
        "state_files": [(s.name, s.latest, s.all_prefixes, s.timestamps, s.last_preserved_timestamp)
                        for s in result.state_files],
        "orphans": [f.name for f in result.orphans],
    }


def _problems(result: discovery.ScanResult) -> dict[str, list[str]]:
    return {c.prefix: c.problems for c in result.checkpoints}


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    make_seed_run(directory, steps=(100, 200, 300))
    return directory


def test_seed_run_in_a_bucket_scans_like_the_local_directory(seed_dir, s3_bucket):
    s3_bucket.upload_directory(seed_dir, "runs/seed")
    url = s3_bucket.url("runs/seed")
    local = discovery.scan_directory(str(seed_dir))
    remote = discovery.scan_directory(url)
    assert _summary(remote) == _summary(local)
    assert [c.prefix for c in remote.checkpoints if c.status == discovery.PRESENT] == [
        "model.ckpt-100", "model.ckpt-200", "model.ckpt-300", "subset.ckpt-100", "subset.ckpt-200",
        "subset.ckpt-300",
    ]
    # Fingerprints of objects carry the ETag; a local file's do not.
    assert all(f.etag for c in remote.checkpoints for f in c.files)
    assert remote.problems == local.problems


def test_tf2_manager_run_in_a_bucket_scans_like_the_local_directory(tmp_path, s3_bucket):
    made = make_tf2_manager_run(tmp_path / "tf2", saves=3)
    s3_bucket.upload_directory(made.directory, "runs/tf2")
    remote = discovery.scan_directory(s3_bucket.url("runs/tf2"))
    assert _summary(remote) == _summary(discovery.scan_directory(made.directory))
    assert remote.format == discovery.TF2
    assert remote.state_files[0].latest == made.latest
    assert remote.state_files[0].timestamps == pytest.approx(made.timestamps)


def test_rescan_with_known_fingerprints_reads_no_index(seed_dir, s3_bucket):
    s3_bucket.upload_directory(seed_dir, "runs/seed")
    url = s3_bucket.url("runs/seed")
    first = discovery.scan_directory(url)
    known = {c.prefix: c.fingerprint for c in first.checkpoints}
    with storage.count_requests() as counts:
        again = discovery.scan_directory(url, known=known)
    # One LIST, and one GET per state file (the scanner skips even those when the listing is
    # unchanged); no .index is fetched again.
    assert counts == {"ListObjectsV2": 1, "GetObject": len(first.state_files)}
    assert all(c.unchanged for c in again.checkpoints)
    # A replaced object (new ETag) is read again, even with the same size and in the same second.
    index_key = "runs/seed/model.ckpt-200.index"
    body = s3_bucket.get(index_key)
    s3_bucket.put(index_key, body[:-1] + bytes([body[-1] ^ 0xFF]))
    with storage.count_requests() as counts:
        third = discovery.scan_directory(url, known=known)
    changed = [c.prefix for c in third.checkpoints if not c.unchanged]
    assert changed == ["model.ckpt-200"]
    assert counts["GetObject"] == len(first.state_files) + 1


def test_truncated_index_in_a_bucket_is_corrupt_as_locally(tmp_path, s3_bucket):
    made = make_seed_run(tmp_path / "run", steps=(100, 200))
    truncate_index(f"{made.directory}/model.ckpt-200")
    s3_bucket.upload_directory(made.directory, "runs/t")
    local = discovery.scan_directory(made.directory)
    remote = discovery.scan_directory(s3_bucket.url("runs/t"))
    assert _summary(remote) == _summary(local)
    broken = {c.prefix: c for c in remote.checkpoints}["model.ckpt-200"]
    assert broken.status == discovery.CORRUPT
    # The message names the object, as a local one names the file (not a private copy).
    assert broken.problems[0].startswith("cannot read model.ckpt-200.index")
    assert "index-copy" not in " ".join(broken.problems)


def test_missing_shard_in_a_bucket_is_incomplete_as_locally(tmp_path, s3_bucket):
    made = make_sharded_checkpoint(tmp_path / "sharded")
    delete_data_shard(f"{made.directory}/{made.prefix}", shard=1)
    # And a checkpoint whose every data file is gone: the shard count comes from the index header.
    other = tmp_path / "bare"
    seed = make_seed_run(other, steps=(100,))
    delete_data_shard(f"{seed.directory}/model.ckpt-100")
    for name in (other).iterdir():
        shutil.copy(name, made.directory)
    s3_bucket.upload_directory(made.directory, "runs/sharded")
    local = discovery.scan_directory(made.directory)
    remote = discovery.scan_directory(s3_bucket.url("runs/sharded"))
    assert _summary(remote) == _summary(local)
    assert _problems(remote) == _problems(local)
    statuses = {c.prefix: c.status for c in remote.checkpoints}
    assert statuses[made.prefix] == discovery.INCOMPLETE
    assert statuses["model.ckpt-100"] == discovery.INCOMPLETE


def test_missing_bucket_is_an_error_not_an_empty_run(s3_env):
    with pytest.raises(storage.StorageError):
        discovery.list_entries("s3://no-such-bucket-anywhere/runs/x")
