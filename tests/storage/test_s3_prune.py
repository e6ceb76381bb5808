"""Executing a retention plan on a run in a bucket, and making a checkpoint latest there.

Real TensorFlow checkpoints are saved locally, uploaded with boto3 to the loopback S3 server, pruned
through ``persistence.pruning`` and downloaded again for TensorFlow to read: what is left in the
bucket must be what TensorFlow's own ``get_checkpoint_state`` / ``latest_checkpoint`` agree with.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from persistence import storage
from persistence.pruning import execute_plan
from persistence.restore import make_latest
from persistence.statefile import (
    StateFileChanged,
    find_state_files,
    parse_state_bytes,
    read_state_version,
    write_state_file,
)
from tests.persistence.test_retention import facts_from_directory, plan, save_tf1_run
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

pytestmark = [pytest.mark.tf]

STEPS = [100, 200, 300, 400, 500, 600]


@pytest.fixture
def local_run(tmp_path):
    directory = tmp_path / "local"
    directory.mkdir()
    values = save_tf1_run(str(directory), STEPS, max_to_keep=10)  # the state lists them all
    return str(directory), values


@pytest.fixture
def bucket_run(s3_bucket, local_run):
    directory, values = local_run
    s3_bucket.upload_directory(directory, "runs/r")
    return s3_bucket.url("runs/r"), directory, values


def download(bucket, prefix: str, target) -> str:
    os.makedirs(target, exist_ok=True)
    for key in bucket.keys(prefix + "/"):
        with open(os.path.join(target, key.rsplit("/", 1)[1]), "wb") as handle:
            handle.write(bucket.get(key))
    return str(target)


def names(bucket, prefix: str = "runs/r") -> set[str]:
    return {key.rsplit("/", 1)[1] for key in bucket.keys(prefix + "/")}


def state_of(bucket, key: str = "runs/r/checkpoint"):
    return parse_state_bytes(bucket.get(key), key.rsplit("/", 1)[1], "s3://x/runs/r")


def test_prune_deletes_exactly_the_planned_objects_and_tensorflow_reads_what_is_left(s3_bucket, bucket_run, tmp_path):
    import tensorflow as tf

    url, directory, values = bucket_run
    p = plan(facts_from_directory(directory), max_to_keep=2)
    assert p.decisions[0].keep_meta_only  # model.ckpt-100 goes, its .meta stays for the others
    sizes = {n: os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)}
    before = names(s3_bucket)
    s3_bucket.put("runs/other/model.ckpt-100.index", b"not this run")

    result = execute_plan(url, p, state_files=find_state_files(url))

    assert result.ok and sorted(result.deleted) == p.files_to_delete and result.already_gone == []
    assert result.bytes_freed == sum(sizes[n] for n in p.files_to_delete) > 0
    assert result.state_files == ["checkpoint"]
    assert names(s3_bucket) == before - set(p.files_to_delete)
    assert "model.ckpt-100.meta" in names(s3_bucket)
    assert s3_bucket.keys("runs/other/") == ["runs/other/model.ckpt-100.index"]

    copy = download(s3_bucket, "runs/r", tmp_path / "copy")
    state = tf.train.get_checkpoint_state(copy)
    assert os.path.basename(state.model_checkpoint_path) == "model.ckpt-600"
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-500", "model.ckpt-600"]
    assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)
    newest = tf.train.latest_checkpoint(copy)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(copy, "model.ckpt-100.meta"))
        saver.restore(sess, newest)
        np.testing.assert_array_equal(sess.run(tf.compat.v1.global_variables()[0]), values[600])


def test_rerunning_a_half_done_prune_finishes_it(s3_bucket, bucket_run):
    url, directory, _ = bucket_run
    p = plan(facts_from_directory(directory), max_to_keep=2)
    # Killed after the .index objects went: those count as done, the rest goes now.
    done_before = [n for n in p.files_to_delete if n.endswith(".index")]
    for name in done_before:
        s3_bucket.delete(f"runs/r/{name}")
    expected = names(s3_bucket) - set(p.files_to_delete)

    result = execute_plan(url, p, state_files=find_state_files(url))
    assert sorted(result.already_gone) == sorted(done_before)
    assert sorted(result.deleted) == sorted(set(p.files_to_delete) - set(done_before))
    assert names(s3_bucket) == expected

    again = execute_plan(url, p, state_files=find_state_files(url))
    assert again.deleted == [] and sorted(again.already_gone) == p.files_to_delete and again.bytes_freed == 0
    assert names(s3_bucket) == expected


def _tampered(p, extra: str):
    """The plan with ``extra`` added to a deleted checkpoint's files, consistently (as edited JSON would be)."""
    decisions = list(p.decisions)
    first = next(i for i, d in enumerate(decisions) if not d.keep)
    decisions[first] = dataclasses.replace(decisions[first], delete_files=[*decisions[first].delete_files, extra])
    return dataclasses.replace(p, decisions=decisions, files_to_delete=sorted([*p.files_to_delete, extra]))


@pytest.mark.parametrize("extra", [
    "checkpoint", "../other/model.ckpt-100.index", "sub/model.ckpt-600.index", "..", "model.ckpt-600\\x", "",
])
def test_an_edited_plan_is_refused_before_anything_is_deleted(s3_bucket, bucket_run, extra):
    url, directory, _ = bucket_run
    s3_bucket.put("runs/other/model.ckpt-100.index", b"another run")
    s3_bucket.put("runs/r/sub/model.ckpt-600.index", b"below the run")
    keys = s3_bucket.keys()
    state = s3_bucket.get("runs/r/checkpoint")
    tampered = _tampered(plan(facts_from_directory(directory), max_to_keep=2), extra)

    with pytest.raises(ValueError, match="state file|not a file name"):
        execute_plan(url, tampered, state_files=find_state_files(url))
    assert s3_bucket.keys() == keys and s3_bucket.get("runs/r/checkpoint") == state


def test_a_plan_whose_decisions_disagree_with_its_files_is_refused(s3_bucket, bucket_run):
    url, directory, _ = bucket_run
    p = plan(facts_from_directory(directory), max_to_keep=2)
    edited = dataclasses.replace(p, files_to_delete=sorted([*p.files_to_delete, "model.ckpt-600.index"]))
    keys = s3_bucket.keys()
    with pytest.raises(ValueError, match="inconsistent"):
        execute_plan(url, edited, state_files=find_state_files(url))
    assert s3_bucket.keys() == keys


def test_a_plan_that_deletes_the_latest_is_refused_before_anything_is_deleted(s3_bucket, bucket_run):
    url, directory, _ = bucket_run
    p = plan(facts_from_directory(directory), max_to_keep=2)
    assert "model.ckpt-200" in p.deleted_prefixes
    # Made latest after the plan was computed (a rollback by someone else).
    data, etag = read_state_version(url)
    write_state_file(url, latest="model.ckpt-200", all_prefixes=["model.ckpt-200", "model.ckpt-600"],
                     unchanged_from=data, if_match=etag)
    keys = s3_bucket.keys()
    with pytest.raises(ValueError, match="names model.ckpt-200 as the latest checkpoint"):
        execute_plan(url, p, state_files=find_state_files(url))
    assert s3_bucket.keys() == keys


def test_a_state_object_written_with_full_urls_keeps_them(s3_bucket, bucket_run):
    url, directory, _ = bucket_run
    text = "".join(f'{field}: "{url}/model.ckpt-{s}"\n' for field, s in [("model_checkpoint_path", 600)] + [
        ("all_model_checkpoint_paths", s) for s in STEPS])
    s3_bucket.put("runs/r/checkpoint", text.encode())
    p = plan(facts_from_directory(directory), max_to_keep=2)
    execute_plan(url, p, state_files=["checkpoint"])
    assert s3_bucket.get("runs/r/checkpoint").decode() == (
        f'model_checkpoint_path: "{url}/model.ckpt-600"\n'
        f'all_model_checkpoint_paths: "{url}/model.ckpt-500"\n'
        f'all_model_checkpoint_paths: "{url}/model.ckpt-600"\n'
        f"last_preserved_timestamp: {p.last_preserved_timestamp}\n")


def test_a_conditional_state_write_against_an_old_etag_changes_nothing(s3_bucket, bucket_run):
    url, _, _ = bucket_run
    data, etag = read_state_version(url)
    s3_bucket.put("runs/r/checkpoint", b'model_checkpoint_path: "model.ckpt-600"\n')  # a trainer's save
    with pytest.raises(StateFileChanged):
        write_state_file(url, latest="model.ckpt-100", all_prefixes=["model.ckpt-100"], unchanged_from=data,
                         if_match=etag)
    assert s3_bucket.get("runs/r/checkpoint") == b'model_checkpoint_path: "model.ckpt-600"\n'
    # Without an ETag the object is only created, never replaced.
    with pytest.raises(StateFileChanged):
        write_state_file(url, latest="model.ckpt-100", all_prefixes=["model.ckpt-100"])
    write_state_file(url, "fresh_checkpoint", latest="model.ckpt-100", all_prefixes=["model.ckpt-100"])
    assert state_of(s3_bucket, "runs/r/fresh_checkpoint").latest == "model.ckpt-100"


def test_make_latest_in_a_bucket_rolls_back_and_tensorflow_agrees(s3_bucket, bucket_run, tmp_path):
    import tensorflow as tf

    url, _, _ = bucket_run
    result = make_latest(url, "model.ckpt-400")
    assert (result.latest, result.previous_latest) == ("model.ckpt-400", "model.ckpt-600")
    state = state_of(s3_bucket)
    assert state.latest == "model.ckpt-400" and state.all_prefixes == [f"model.ckpt-{s}" for s in STEPS]
    copy = download(s3_bucket, "runs/r", tmp_path / "copy")
    assert tf.train.latest_checkpoint(copy) == os.path.join(copy, "model.ckpt-400")
    with pytest.raises(FileNotFoundError):
        make_latest(url, "model.ckpt-700")
    with pytest.raises(FileNotFoundError):
        make_latest(url, "s3://elsewhere/runs/r/model.ckpt-400")
    assert state_of(s3_bucket).latest == "model.ckpt-400"


def test_errors_of_a_bucket_prune_name_no_credentials(s3_bucket, bucket_run):
    url, directory, _ = bucket_run
    p = plan(facts_from_directory(directory), max_to_keep=2)
    keys = s3_bucket.keys()
    with pytest.raises(OSError) as refused:
        execute_plan("s3://no-such-bucket-here/runs/r", p, state_files=["checkpoint"])
    assert "no-such-bucket-here" in str(refused.value)
    assert FAKE_SECRET not in str(refused.value) and FAKE_KEY_ID not in str(refused.value)
    assert s3_bucket.keys() == keys


def test_storage_reads_content_and_etag_of_one_version(s3_bucket):
    store = storage.storage_for(s3_bucket.url("run"))
    etag = store.put_bytes(s3_bucket.url("run/state"), b"one")
    assert store.read_versioned(s3_bucket.url("run/state")) == (b"one", etag)
    with pytest.raises(storage.StorageError, match="larger than 2 bytes"):
        store.read_versioned(s3_bucket.url("run/state"), limit=2)
    with pytest.raises(FileNotFoundError):
        store.read_versioned(s3_bucket.url("run/none"))
