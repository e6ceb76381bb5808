"""The trash on real TensorFlow checkpoints, in a local directory and in a bucket: moving a prune's
files aside, restoring them (never over a file saved since), and emptying old batches (never
anything outside ``.trash``)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from persistence import discovery, storage, trash
from persistence.pruning import execute_plan
from persistence.statefile import read_state_file
from tests.persistence.test_retention import facts_from_directory, listing, plan, save_tf1_run

pytestmark = pytest.mark.tf

DAY = 86400.0
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """Six TF1 checkpoints (``w`` holds step/1000), made once; each test works on a copy."""
    directory = tmp_path_factory.mktemp("saved") / "run"
    directory.mkdir()
    values = save_tf1_run(str(directory), [100, 200, 300, 400, 500, 600])
    return str(directory), values


@pytest.fixture
def run_dir(saved_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(saved_run[0], target)
    return str(target)


def files_of(directory: str, prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(prefix + "."))


def restore_value(directory: str, prefix: str) -> np.ndarray:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(directory, prefix))
    return reader.get_tensor("w")


# --- local directories -------------------------------------------------------------------------


def test_a_prune_into_the_trash_moves_the_files_and_discovery_no_longer_counts_them(run_dir):
    p = plan(facts_from_directory(run_dir), max_to_keep=3)
    before = listing(run_dir)
    result = execute_plan(run_dir, p, trash_batch="prune-7")

    assert result.ok and result.trash_batch == "prune-7"
    assert sorted(result.deleted) == p.files_to_delete
    assert listing(run_dir) == (before - set(p.files_to_delete)) | {trash.TRASH_DIR}
    batch_dir = os.path.join(run_dir, trash.TRASH_DIR, "prune-7")
    assert sorted(os.listdir(batch_dir)) == p.files_to_delete
    assert result.bytes_freed == sum(os.path.getsize(os.path.join(batch_dir, n)) for n in p.files_to_delete)
    # The state file no longer names them, and a scan sees only what stayed in the run.
    state = read_state_file(run_dir)
    assert state.latest == "model.ckpt-600" and not set(state.all_prefixes) & p.deleted_prefixes
    scanned = discovery.scan_directory(run_dir, roots=[os.path.dirname(run_dir)])
    assert [c.prefix for c in scanned.checkpoints] == ["model.ckpt-400", "model.ckpt-500", "model.ckpt-600"]
    assert [o.name for o in scanned.orphans] == ["model.ckpt-100.meta"]
    (batch,) = trash.list_batches(run_dir)
    assert (batch.name, sorted(batch.files), sorted(batch.expected)) == ("prune-7", p.files_to_delete,
                                                                         p.files_to_delete)


def test_a_restored_batch_is_restorable_by_tensorflow_again(run_dir, saved_run):
    p = plan(facts_from_directory(run_dir), max_to_keep=3)
    execute_plan(run_dir, p, trash_batch="prune-1")
    assert not files_of(run_dir, "model.ckpt-200")

    result = trash.restore(run_dir, "prune-1")

    assert sorted(result.restored) == p.files_to_delete and not result.refused and not result.failed
    assert result.batch_removed and trash.list_batches(run_dir) == []
    assert os.listdir(os.path.join(run_dir, trash.TRASH_DIR)) == []
    np.testing.assert_array_equal(restore_value(run_dir, "model.ckpt-200"), saved_run[1][200])
    scanned = discovery.scan_directory(run_dir, roots=[os.path.dirname(run_dir)])
    assert [c.prefix for c in scanned.checkpoints] == [f"model.ckpt-{s}" for s in (100, 200, 300, 400, 500, 600)]
    assert {c.status for c in scanned.checkpoints} == {discovery.PRESENT}


def test_restore_never_overwrites_a_checkpoint_saved_again_under_the_same_name(run_dir):
    p = plan(facts_from_directory(run_dir), max_to_keep=3)
    execute_plan(run_dir, p, trash_batch="prune-1")
    # A trainer saves step 200 again: different bytes under the same names.
    for name in ("model.ckpt-200.index", "model.ckpt-200.data-00000-of-00001"):
        with open(os.path.join(run_dir, name), "wb") as handle:
            handle.write(b"saved again")

    result = trash.restore(run_dir, "prune-1")

    assert sorted(result.refused) == ["model.ckpt-200.data-00000-of-00001", "model.ckpt-200.index"]
    assert "not overwritten" in result.refused["model.ckpt-200.index"]
    assert sorted(result.restored) == sorted(set(p.files_to_delete) - set(result.refused))
    assert "model.ckpt-300.index" in result.restored
    for name in ("model.ckpt-200.index", "model.ckpt-200.data-00000-of-00001"):
        with open(os.path.join(run_dir, name), "rb") as handle:
            assert handle.read() == b"saved again"
    # What was refused is still in the trash, whole, and the batch stays to say so.
    assert not result.batch_removed
    (batch,) = trash.list_batches(run_dir)
    assert sorted(batch.files) == ["model.ckpt-200.data-00000-of-00001", "model.ckpt-200.index"]


def test_restore_refuses_the_whole_checkpoint_when_only_one_of_its_files_is_back(run_dir):
    p = plan(facts_from_directory(run_dir), max_to_keep=4)  # 100 (all but its .meta) and 200
    execute_plan(run_dir, p, trash_batch="b")
    with open(os.path.join(run_dir, "model.ckpt-200.data-00000-of-00001"), "wb") as handle:
        handle.write(b"a newer shard")
    result = trash.restore(run_dir, "b")
    assert set(result.refused) == {"model.ckpt-200.index", "model.ckpt-200.data-00000-of-00001"}
    assert not any(n.startswith("model.ckpt-200.") for n in result.restored)
    assert not os.path.exists(os.path.join(run_dir, "model.ckpt-200.index"))


def test_restore_moves_back_only_what_the_prune_put_in_the_trash(run_dir, tmp_path):
    p = plan(facts_from_directory(run_dir), max_to_keep=4)
    execute_plan(run_dir, p, trash_batch="b")
    batch_dir = os.path.join(run_dir, trash.TRASH_DIR, "b")
    with open(os.path.join(batch_dir, "planted.index"), "wb") as handle:
        handle.write(b"x")
    outside = tmp_path / "secret"
    outside.write_bytes(b"do not move me")
    os.symlink(outside, os.path.join(batch_dir, "model.ckpt-777.index"))

    result = trash.restore(run_dir, "b")

    assert "planted.index" in result.refused and "model.ckpt-777.index" in result.refused
    assert not os.path.lexists(os.path.join(run_dir, "planted.index"))
    assert not os.path.lexists(os.path.join(run_dir, "model.ckpt-777.index"))
    assert sorted(result.restored) == sorted(p.files_to_delete)


def test_a_retried_move_finishes_and_never_replaces_what_the_batch_holds(run_dir):
    p = plan(facts_from_directory(run_dir), max_to_keep=3)
    names = sorted(p.files_to_delete, key=lambda n: not n.endswith(".index"))
    first = trash.move_to_trash(run_dir, names[:2], "b", now=NOW)
    again = trash.move_to_trash(run_dir, names, "b", now=NOW + 60)
    assert sorted(first.moved + again.moved) == sorted(names) and again.already_gone == names[:2]
    (batch,) = trash.list_batches(run_dir)
    assert batch.trashed_at == NOW and sorted(batch.expected) == sorted(names)

    # A file of a name the batch already holds appears in the run: it stays in the run.
    with open(os.path.join(run_dir, names[0]), "wb") as handle:
        handle.write(b"new")
    third = trash.move_to_trash(run_dir, [names[0]], "b")
    assert names[0] in third.failed and os.path.getsize(os.path.join(run_dir, names[0])) == 3
    assert os.path.getsize(os.path.join(run_dir, trash.TRASH_DIR, "b", names[0])) != 3


def test_empty_removes_only_batches_older_than_asked(run_dir):
    facts = facts_from_directory(run_dir)
    trash.move_to_trash(run_dir, list(facts[1].files), "old", now=NOW - 8 * DAY)
    trash.move_to_trash(run_dir, list(facts[2].files), "new", now=NOW - 1 * DAY)
    old_bytes = facts[1].size_bytes

    result = trash.empty(run_dir, older_than=7 * DAY, now=NOW)

    assert (result.emptied, result.kept, result.bytes_freed, result.files) == (["old"], ["new"], old_bytes, 2)
    assert [b.name for b in trash.list_batches(run_dir)] == ["new"]
    assert sorted(os.listdir(os.path.join(run_dir, trash.TRASH_DIR))) == ["new", "new.json"]
    assert trash.empty(run_dir, older_than=0, now=NOW).emptied == ["new"]


def test_empty_never_touches_anything_outside_the_trash(run_dir, tmp_path):
    facts = facts_from_directory(run_dir)
    trash.move_to_trash(run_dir, list(facts[1].files), "b", now=NOW - 30 * DAY)
    batch_dir = os.path.join(run_dir, trash.TRASH_DIR, "b")
    # Links planted in the batch, to a file outside the run and to a kept checkpoint's file,
    # and a directory inside the batch: only the links go, not what they point at.
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep")
    kept_file = os.path.join(run_dir, "model.ckpt-600.index")
    os.symlink(outside, os.path.join(batch_dir, "link-out"))
    os.symlink(kept_file, os.path.join(batch_dir, "link-kept"))
    os.mkdir(os.path.join(batch_dir, "nested"))
    with open(os.path.join(batch_dir, "nested", "inner"), "wb") as handle:
        handle.write(b"inner")
    before = listing(run_dir)

    result = trash.empty(run_dir, older_than=DAY, now=NOW)

    assert outside.read_bytes() == b"keep" and os.path.isfile(kept_file)
    assert listing(run_dir) == before
    # The nested directory is not recursed into: the batch stays, reported, with it.
    assert result.emptied == [] and result.failed
    assert os.listdir(batch_dir) == ["nested"]


def test_a_trash_that_is_a_link_is_refused_for_moving_and_emptying(run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "b").mkdir(parents=True)
    (elsewhere / "b" / "victim").write_bytes(b"v")
    (elsewhere / "b.json").write_text('{"batch": "b", "trashed_at": 0, "files": ["victim"]}')
    os.symlink(elsewhere, os.path.join(run_dir, trash.TRASH_DIR))
    before = listing(run_dir)

    with pytest.raises(trash.TrashError):
        trash.move_to_trash(run_dir, ["model.ckpt-200.index"], "b")
    with pytest.raises(trash.TrashError):
        trash.empty(run_dir, older_than=0, now=NOW)
    assert listing(run_dir) == before and (elsewhere / "b" / "victim").read_bytes() == b"v"


def test_a_batch_that_is_a_link_is_never_emptied_through(run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim").write_bytes(b"v")
    os.mkdir(os.path.join(run_dir, trash.TRASH_DIR))
    os.symlink(elsewhere, os.path.join(run_dir, trash.TRASH_DIR, "b"))
    with open(os.path.join(run_dir, trash.TRASH_DIR, "b.json"), "w") as handle:
        handle.write('{"batch": "b", "trashed_at": 0, "files": ["victim"]}')

    result = trash.empty(run_dir, older_than=0, now=NOW)
    assert result.emptied == [] and (elsewhere / "victim").read_bytes() == b"v"
    with pytest.raises(trash.TrashError):
        trash.restore(run_dir, "b")
    assert not os.path.lexists(os.path.join(run_dir, "victim"))


@pytest.mark.parametrize("batch", ["", "../x", ".hidden", "a/b", "x" * 101, "a.json"])
def test_a_batch_name_that_could_be_a_path_is_refused(run_dir, batch):
    with pytest.raises(trash.TrashError):
        trash.move_to_trash(run_dir, ["model.ckpt-200.index"], batch)
    assert os.path.exists(os.path.join(run_dir, "model.ckpt-200.index"))


# --- buckets -----------------------------------------------------------------------------------


def test_trash_in_a_bucket_moves_restores_and_empties_real_checkpoint_objects(run_dir, s3_bucket, saved_run):
    s3_bucket.upload_directory(run_dir, "runs/r")
    s3_bucket.put("runs/r-other/model.ckpt-200.index", b"a sibling prefix")
    url = s3_bucket.url("runs/r")
    doomed = [*files_of(run_dir, "model.ckpt-200"), *files_of(run_dir, "model.ckpt-300")]
    doomed.sort(key=lambda n: (not n.endswith(".index"), n))
    originals = {n: s3_bucket.get(f"runs/r/{n}") for n in doomed}

    moved = trash.move_to_trash(url, doomed, "prune-3", now=NOW - 10 * DAY)

    assert sorted(moved.moved) == sorted(doomed) and not moved.failed
    assert moved.bytes == sum(len(v) for v in originals.values())
    names = {e.name for e in storage.storage_for(url).list(url)}
    assert not names & set(doomed)  # the run's listing (what discovery reads) no longer has them
    assert s3_bucket.keys("runs/r/.trash/") == sorted(
        ["runs/r/.trash/prune-3.json", *(f"runs/r/.trash/prune-3/{n}" for n in doomed)])
    (batch,) = trash.list_batches(url)
    assert (batch.name, batch.trashed_at, sorted(batch.files)) == ("prune-3", NOW - 10 * DAY, sorted(doomed))

    # Step 300 is saved again meanwhile: its objects are not replaced; 200 comes back.
    s3_bucket.put("runs/r/model.ckpt-300.index", b"saved again")
    restored = trash.restore(url, "prune-3")
    assert sorted(restored.restored) == files_of(run_dir, "model.ckpt-200")
    assert set(restored.refused) == set(files_of(run_dir, "model.ckpt-300"))
    assert s3_bucket.get("runs/r/model.ckpt-300.index") == b"saved again"
    assert "runs/r/model.ckpt-300.data-00000-of-00001" not in s3_bucket.keys("runs/r/model.ckpt-300")
    for name in files_of(run_dir, "model.ckpt-200"):
        assert s3_bucket.get(f"runs/r/{name}") == originals[name]
    assert s3_bucket.keys("runs/r/.trash/prune-3/") == sorted(
        f"runs/r/.trash/prune-3/{n}" for n in files_of(run_dir, "model.ckpt-300"))

    # Emptying: the batch goes, and nothing outside .trash/ (the run, its sibling prefix).
    outside = set(s3_bucket.keys()) - set(s3_bucket.keys("runs/r/.trash/"))
    assert trash.empty(url, older_than=11 * DAY, now=NOW).emptied == []
    emptied = trash.empty(url, older_than=7 * DAY, now=NOW)
    assert emptied.emptied == ["prune-3"] and emptied.bytes_freed == sum(
        len(originals[n]) for n in files_of(run_dir, "model.ckpt-300"))
    assert s3_bucket.keys("runs/r/.trash/") == [] and set(s3_bucket.keys()) == outside
    assert trash.list_batches(url) == []


def test_a_restored_bucket_checkpoint_reads_back_in_tensorflow(run_dir, s3_bucket, saved_run, tmp_path):
    s3_bucket.upload_directory(run_dir, "runs/r")
    url = s3_bucket.url("runs/r")
    doomed = files_of(run_dir, "model.ckpt-200")
    trash.move_to_trash(url, doomed, "b")
    assert trash.restore(url, "b").batch_removed
    local = tmp_path / "back"
    local.mkdir()
    for name in doomed:
        (local / name).write_bytes(s3_bucket.get(f"runs/r/{name}"))
    np.testing.assert_array_equal(restore_value(str(local), "model.ckpt-200"), saved_run[1][200])
