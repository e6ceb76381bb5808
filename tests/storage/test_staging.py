"""The staging cache against the loopback S3 server: real objects, real TensorFlow checkpoints,
requests counted on the client, several processes sharing one cache directory."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from persistence import staging, storage
from tests import checkpoint_factory as factory


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=(100, 200))
    return directory


def _entry(bucket, key: str) -> storage.Entry:
    url = bucket.url(key)
    directory, _, name = url.rpartition("/")
    return next(e for e in storage.storage_for(directory).list(directory) if e.name == name)


def _gets(counts: dict) -> int:
    return counts.get("GetObject", 0)


@pytest.mark.tf
def test_a_staged_checkpoint_reads_in_tensorflow_like_the_local_one(s3_bucket, seed_dir, tmp_path):
    import tensorflow as tf

    s3_bucket.upload_directory(seed_dir, "runs/seed")
    cache = staging.StagingCache(tmp_path / "cache", 10 << 20)
    with cache.stage(s3_bucket.url("runs/seed"), "model.ckpt-200", meta="model.ckpt-100.meta") as staged:
        assert sorted(os.listdir(staged.directory)) == sorted(
            [*(n for n in os.listdir(seed_dir) if n.startswith("model.ckpt-200.")), "model.ckpt-100.meta"])
        remote = tf.train.load_checkpoint(staged.path)
        local = tf.train.load_checkpoint(str(seed_dir / "model.ckpt-200"))
        names = sorted(remote.get_variable_to_shape_map())
        assert names == sorted(local.get_variable_to_shape_map())
        for name in names:
            np.testing.assert_array_equal(remote.get_tensor(name), local.get_tensor(name))
        view = staged.directory
    assert not os.path.exists(view)  # the view goes with the block; the cached objects stay
    assert cache.size() == sum(os.path.getsize(seed_dir / n) for n in os.listdir(seed_dir)
                               if n.startswith("model.ckpt-200.") or n == "model.ckpt-100.meta")


def test_a_second_stage_makes_no_get_and_a_changed_object_is_fetched_again(s3_bucket, seed_dir, tmp_path):
    s3_bucket.upload_directory(seed_dir, "runs/seed")
    cache = staging.StagingCache(tmp_path / "cache", 10 << 20)
    url = s3_bucket.url("runs/seed")
    with storage.count_requests() as first, cache.stage(url, "model.ckpt-100") as staged:
        assert len(staged.fetched) == 2
    assert _gets(first) == 2
    with storage.count_requests() as second, cache.stage(url, "model.ckpt-100") as staged:
        assert staged.fetched == []
    assert _gets(second) == 0 and second.get("ListObjectsV2") == 1

    shard = "runs/seed/model.ckpt-100.data-00000-of-00001"
    changed = bytearray(s3_bucket.get(shard))
    changed[-1] ^= 0xFF  # same size, new contents: only the ETag tells them apart
    s3_bucket.put(shard, bytes(changed))
    with storage.count_requests() as third, cache.stage(url, "model.ckpt-100") as staged:
        assert staged.fetched == [s3_bucket.url(shard)]
        with open(os.path.join(staged.directory, os.path.basename(shard)), "rb") as handle:
            assert handle.read() == bytes(changed)
    assert _gets(third) == 1


def test_a_large_object_arrives_whole_through_ranged_parallel_gets(s3_bucket, tmp_path):
    body = np.random.default_rng(7).bytes(5 * 1024 * 1024 + 123)
    s3_bucket.put("runs/big/blob", body)
    cache = staging.StagingCache(tmp_path / "cache", 20 << 20, part_size=1 << 20, concurrency=4)
    with storage.count_requests() as counts, cache.using(storage.storage_for(s3_bucket.url()), _entry(
            s3_bucket, "runs/big/blob")) as (path, fetched):
        with open(path, "rb") as handle:
            assert handle.read() == body
    assert fetched and _gets(counts) == 6
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_an_object_replaced_between_listing_and_fetch_is_not_staged(s3_bucket, tmp_path):
    s3_bucket.put("runs/x/blob", b"a" * 4096)
    entry = _entry(s3_bucket, "runs/x/blob")
    s3_bucket.put("runs/x/blob", b"b" * 4096)
    cache = staging.StagingCache(tmp_path / "cache", 1 << 20, part_size=1024)
    with pytest.raises(staging.StagingError, match="runs/x/blob"):
        with cache.using(storage.storage_for(entry.path), entry):
            pass
    assert os.listdir(tmp_path / "cache" / "objects") == []
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_eviction_keeps_the_size_under_the_limit_least_recently_used_first(s3_bucket, tmp_path):
    for n in range(5):
        s3_bucket.put(f"runs/e/o{n}", bytes([n]) * 1000)
    cache = staging.StagingCache(tmp_path / "cache", 2500)
    store = storage.storage_for(s3_bucket.url())
    entries = [_entry(s3_bucket, f"runs/e/o{n}") for n in range(5)]
    for n, entry in enumerate(entries):
        with cache.using(store, entry):
            pass
        os.utime(cache._entry(cache.entry_name(entry.path, entry.etag)), (1000 + n, 1000 + n))
        assert cache.size() <= 2500
    held = sorted(os.listdir(tmp_path / "cache" / "objects"))
    assert held == sorted(cache.entry_name(e.path, e.etag) for e in entries[3:])
    with pytest.raises(staging.StagingError, match="do not fit"):
        with cache.using(store, storage.Entry("big", entries[0].path, 3000, 0, "other")):
            pass


def _hold(directory: str, url: str, etag: str, size: int, ready, release) -> None:
    cache = staging.StagingCache(directory, 2500)
    entry = storage.Entry(url.rsplit("/", 1)[-1], url, size, 0, etag)
    with cache.using(storage.storage_for(url), entry):
        ready.set()
        release.wait(30)


def test_an_entry_in_use_by_another_process_is_never_evicted(s3_bucket, tmp_path):
    for n in range(3):
        s3_bucket.put(f"runs/u/o{n}", bytes([n]) * 1000)
    entries = [_entry(s3_bucket, f"runs/u/o{n}") for n in range(3)]
    directory = str(tmp_path / "cache")
    cache = staging.StagingCache(directory, 2500)
    store = storage.storage_for(s3_bucket.url())
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(directory, entries[0].path, entries[0].etag, 1000, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        # The oldest entry is the one the other process holds: eviction must pass over it.
        os.utime(cache._entry(cache.entry_name(entries[0].path, entries[0].etag)), (1, 1))
        with cache.using(store, entries[1]):
            pass
        with cache.using(store, entries[2]):
            pass
        names = os.listdir(os.path.join(directory, "objects"))
        assert cache.entry_name(entries[0].path, entries[0].etag) in names
        assert cache.entry_name(entries[2].path, entries[2].etag) in names
        assert cache.size() <= 2500
        # Everything left is in use by it or by us: a new object is refused, not squeezed in.
        s3_bucket.put("runs/u/o9", b"z" * 2000)
        with pytest.raises(staging.StagingError, match="in use"):
            with cache.using(store, _entry(s3_bucket, "runs/u/o9")):
                pass
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0


def test_a_checkpoint_larger_than_the_cache_is_refused_before_any_get(s3_bucket, seed_dir, tmp_path):
    s3_bucket.upload_directory(seed_dir, "runs/seed")
    cache = staging.StagingCache(tmp_path / "cache", 100)
    with storage.count_requests() as counts, pytest.raises(staging.StagingError, match="STAGING_CACHE_BYTES"):
        with cache.stage(s3_bucket.url("runs/seed"), "model.ckpt-100"):
            pass
    assert _gets(counts) == 0


def test_leftovers_of_dead_processes_and_of_an_earlier_boot_are_removed(s3_bucket, tmp_path):
    s3_bucket.put("runs/b/o", b"x" * 100)
    directory = tmp_path / "cache"
    cache = staging.StagingCache(directory, 1000)
    with cache.using(storage.storage_for(s3_bucket.url()), _entry(s3_bucket, "runs/b/o")):
        pass
    # A fetch killed mid-way (its pid is gone) left its temporary file and view behind.
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    (directory / "tmp" / f"{dead.pid}-partial").write_bytes(b"\0" * 500)
    (directory / "views" / f"{dead.pid}-view").mkdir()
    assert cache.size() == 600
    cache.remove_stale()
    assert cache.size() == 100 and os.listdir(directory / "views") == []
    # Entries are not fsynced: after a reboot (another boot id) nothing cached before is trusted.
    (directory / "boot_id").write_text("an-earlier-boot")
    staging.StagingCache(directory, 1000)
    assert os.listdir(directory / "objects") == []


def test_cleanup_and_eviction_never_reach_outside_the_cache_through_a_link(s3_bucket, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "model.ckpt-1.index").write_bytes(b"keep me")
    directory = tmp_path / "cache"
    cache = staging.StagingCache(directory, 1000)
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    os.symlink(victim, directory / "views" / f"{dead.pid}-view")
    os.symlink(victim / "model.ckpt-1.index", directory / "tmp" / f"{dead.pid}-partial")
    os.symlink(victim / "model.ckpt-1.index", directory / "objects" / ("0" * 64))
    os.utime(directory / "objects" / ("0" * 64), (1, 1), follow_symlinks=False)
    cache.remove_stale()
    s3_bucket.put("runs/l/o", b"y" * 990)  # only fits once the linked "entry" is evicted
    with cache.using(storage.storage_for(s3_bucket.url()), _entry(s3_bucket, "runs/l/o")):
        pass
    assert not os.path.lexists(directory / "objects" / ("0" * 64))
    assert (victim / "model.ckpt-1.index").read_bytes() == b"keep me"
    assert os.listdir(victim) == ["model.ckpt-1.index"]
