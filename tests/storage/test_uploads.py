"""Uploading a locally written checkpoint into a bucket and merging the state object, against the
loopback S3 server: the order objects go up in, and a merge that never drops another writer's entries."""

from __future__ import annotations

import pytest

from persistence import statefile, storage, uploads


def _state(bucket, key: str = "run/checkpoint") -> statefile.StateFile:
    return statefile.parse_state_bytes(bucket.get(key), "checkpoint", bucket.url("run"))


def test_data_shards_go_up_before_the_meta_and_the_index_last():
    names = ["m-5.index", "m-5.data-00001-of-00002", "m-5.meta", "m-5.data-00000-of-00002"]
    assert uploads.upload_order(names) == [
        "m-5.data-00000-of-00002", "m-5.data-00001-of-00002", "m-5.meta", "m-5.index"]


def test_upload_writes_every_file_under_the_run_prefix(s3_bucket, tmp_path):
    for name, body in {"m-5.index": b"i", "m-5.data-00000-of-00001": b"dd", "stray.txt": b"x"}.items():
        (tmp_path / name).write_bytes(body)
    written = uploads.upload_checkpoint(str(tmp_path), ["m-5.index", "m-5.data-00000-of-00001"], s3_bucket.url("run"))
    assert written == [s3_bucket.url("run/m-5.data-00000-of-00001"), s3_bucket.url("run/m-5.index")]
    assert s3_bucket.keys() == ["run/m-5.data-00000-of-00001", "run/m-5.index"]
    assert s3_bucket.get("run/m-5.data-00000-of-00001") == b"dd"


def test_a_missing_local_file_fails_the_upload_before_its_index_goes_up(s3_bucket, tmp_path):
    (tmp_path / "m-5.index").write_bytes(b"i")
    with pytest.raises(uploads.UploadError, match="m-5.data-00000-of-00001"):
        uploads.upload_checkpoint(str(tmp_path), ["m-5.index", "m-5.data-00000-of-00001"], s3_bucket.url("run"))
    assert s3_bucket.keys() == []


def test_merge_appends_to_a_savers_state_and_moves_latest(s3_bucket):
    s3_bucket.put("run/checkpoint", statefile.format_state_text(
        latest="model.ckpt-20", all_prefixes=["model.ckpt-10", "model.ckpt-20"],
        in_directory="/elsewhere/run").encode())
    merged = uploads.merge_state_object(s3_bucket.url("run"), "checkpoint", latest="job.ckpt-30", saved_at=1.0e9)
    state = _state(s3_bucket)
    assert state.latest == merged.latest == "job.ckpt-30"
    assert state.all_prefixes == merged.all_prefixes == ["model.ckpt-10", "model.ckpt-20", "job.ckpt-30"]
    assert state.timestamps == {}  # a Saver's state has none, and gets none
    assert merged.attempts == 1 and merged.kept_from_others == ["model.ckpt-10", "model.ckpt-20"]


def test_merge_keeps_a_managers_timestamps_and_adds_one_for_the_new_checkpoint(s3_bucket):
    s3_bucket.put("run/checkpoint", statefile.format_state_text(
        latest="ckpt-2", all_prefixes=["ckpt-1", "ckpt-2"], timestamps={"ckpt-1": 100.5, "ckpt-2": 200.25},
        last_preserved_timestamp=50.0).encode())
    uploads.merge_state_object(s3_bucket.url("run"), "checkpoint", latest="ckpt-3", saved_at=300.75)
    state = _state(s3_bucket)
    assert state.all_prefixes == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert state.timestamps == {"ckpt-1": 100.5, "ckpt-2": 200.25, "ckpt-3": 300.75}
    assert state.last_preserved_timestamp == 50.0


def test_merge_creates_an_absent_state_object(s3_bucket):
    uploads.merge_state_object(s3_bucket.url("run"), "other_state", latest="a-1", saved_at=1.0)
    state = statefile.parse_state_bytes(s3_bucket.get("run/other_state"), "other_state", s3_bucket.url("run"))
    assert (state.latest, state.all_prefixes) == ("a-1", ["a-1"])


def test_a_trainer_writing_between_our_read_and_write_is_merged_not_reverted(s3_bucket):
    s3_bucket.put("run/checkpoint", statefile.format_state_text(
        latest="model.ckpt-10", all_prefixes=["model.ckpt-10"]).encode())
    trainer_writes = [statefile.format_state_text(latest="model.ckpt-20", all_prefixes=["model.ckpt-10",
                                                                                         "model.ckpt-20"])]

    def trainer_saves_meanwhile() -> None:
        # Exactly between the merge's read and its conditional write, the first time only.
        if trainer_writes:
            s3_bucket.put("run/checkpoint", trainer_writes.pop().encode())

    merged = uploads.merge_state_object(s3_bucket.url("run"), "checkpoint", latest="job.ckpt-15", saved_at=1.0,
                                        after_read=trainer_saves_meanwhile)
    assert merged.attempts == 2
    state = _state(s3_bucket)
    assert state.all_prefixes == ["model.ckpt-10", "model.ckpt-20", "job.ckpt-15"]
    assert state.latest == "job.ckpt-15"


def test_a_state_object_that_keeps_changing_is_left_as_the_trainer_wrote_it(s3_bucket):
    s3_bucket.put("run/checkpoint", b'model_checkpoint_path: "model.ckpt-10"\n')
    counter = iter(range(100, 200))

    def trainer_saves_every_time() -> None:
        step = next(counter)
        s3_bucket.put("run/checkpoint", f'model_checkpoint_path: "model.ckpt-{step}"\n'.encode())

    with pytest.raises(uploads.UploadError, match="kept changing"):
        uploads.merge_state_object(s3_bucket.url("run"), "checkpoint", latest="job.ckpt-1", saved_at=1.0,
                                   attempts=3, after_read=trainer_saves_every_time)
    assert _state(s3_bucket).latest == "model.ckpt-102"


def test_an_unparsable_state_object_is_replaced_as_a_saver_would(s3_bucket):
    s3_bucket.put("run/checkpoint", b"\x00\xffnot a state file")
    merged = uploads.merge_state_object(s3_bucket.url("run"), "checkpoint", latest="job.ckpt-1", saved_at=1.0)
    assert merged.replaced_problem and "not" in merged.replaced_problem
    assert _state(s3_bucket).all_prefixes == ["job.ckpt-1"]


def test_merge_errors_never_show_credentials(s3_env, monkeypatch):
    from tests.s3_server import FAKE_SECRET

    with pytest.raises(uploads.UploadError) as raised:
        uploads.merge_state_object("s3://no-such-bucket-for-merge/run", "checkpoint", latest="a-1", saved_at=1.0)
    assert FAKE_SECRET not in str(raised.value)
    assert isinstance(raised.value, OSError) and not isinstance(raised.value, storage.PreconditionFailed)
