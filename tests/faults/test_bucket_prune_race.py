"""A trainer saving into a bucket run (S3 and GCS) while a prune of that run rewrites its state object.

The trainer does what a TF1 ``Saver`` writing to a bucket does: the checkpoint's objects first,
then the state object, unconditionally (it takes no lock of ours). Whatever the interleaving, the
prune must lose nothing the trainer wrote and never put back a state older than the trainer's:
the state object ends up naming the trainer's newest checkpoint, and TensorFlow restores it from a
downloaded copy. The first test forces the worst moment (between our read and our conditional
write); the second lets a trainer thread race a series of prunes.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from persistence import pruning
from persistence.pruning import execute_plan
from persistence.statefile import find_state_files, parse_state_bytes
from tests.persistence.test_retention import facts_from_directory, plan, save_tf1_run
from tests.storage.test_s3_prune import download, names

pytestmark = [pytest.mark.tf]

STEPS = [100, 200, 300, 400, 500, 600]


class Trainer:
    """Uploads checkpoints saved beforehand (real TensorFlow saves) one by one, each followed by
    the state object naming it latest, as the trainer's own ``Saver`` would."""

    def __init__(self, bucket, directory: str, steps: list[int]):
        self.bucket, self.directory, self.steps = bucket, directory, steps
        self.saved: list[str] = []
        self.uploaded: set[str] = set()

    def save_next(self) -> str:
        prefix = f"model.ckpt-{self.steps[len(self.saved)]}"
        for name in sorted(os.listdir(self.directory)):
            if name.startswith(prefix + "."):
                with open(os.path.join(self.directory, name), "rb") as handle:
                    self.bucket.put(f"runs/r/{name}", handle.read())
                self.uploaded.add(name)
        self.saved.append(prefix)
        text = f'model_checkpoint_path: "{prefix}"\n' + "".join(
            f'all_model_checkpoint_paths: "{p}"\n' for p in self.saved)
        self.bucket.put("runs/r/checkpoint", text.encode())
        return prefix


@pytest.fixture(params=["s3_bucket", "gcs_bucket"])
def bucket(request):
    """The same race on S3 (ETags, ``If-Match``) and on GCS (generations, ``ifGenerationMatch``)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def race(bucket, tmp_path):
    initial, later = tmp_path / "initial", tmp_path / "trainer"
    initial.mkdir()
    later.mkdir()
    save_tf1_run(str(initial), STEPS, max_to_keep=10)
    values = save_tf1_run(str(later), [700, 800, 900, 1000, 1100, 1200], meta_first_only=False)
    bucket.upload_directory(initial, "runs/r")
    trainer = Trainer(bucket, str(later), [700, 800, 900, 1000, 1100, 1200])
    return bucket.url("runs/r"), str(initial), trainer, values


def _state(bucket):
    return parse_state_bytes(bucket.get("runs/r/checkpoint"), "checkpoint", "s3://x/runs/r")


def _tensorflow_restores_the_trainers_newest(bucket, trainer, values, target):
    import tensorflow as tf

    copy = download(bucket, "runs/r", target)
    newest = tf.train.latest_checkpoint(copy)
    assert newest == os.path.join(copy, trainer.saved[-1])
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(newest + ".meta")
        saver.restore(sess, newest)
        step = int(trainer.saved[-1].rsplit("-", 1)[1])
        np.testing.assert_array_equal(sess.run(tf.compat.v1.global_variables()[0]), values[step])


def test_a_save_between_our_read_and_our_write_is_kept(race, monkeypatch, tmp_path):
    url, initial, trainer, values = race
    p = plan(facts_from_directory(initial), max_to_keep=2)
    reads = []
    real_read = pruning.read_state_version

    def read_then_trainer_saves(directory, name="checkpoint"):
        version = real_read(directory, name)
        reads.append(name)
        if len(reads) == 2:  # the rewrite's own read: the trainer saves before our write lands
            trainer.save_next()
        return version

    monkeypatch.setattr(pruning, "read_state_version", read_then_trainer_saves)
    result = execute_plan(url, p, state_files=find_state_files(url))

    assert reads == ["checkpoint"] * 3  # the conditional write failed once and was computed again
    assert result.ok and result.state_files == ["checkpoint"]
    state = _state(trainer.bucket)
    assert state.latest == "model.ckpt-700"
    assert state.all_prefixes == ["model.ckpt-700"]  # the trainer's list; nothing deleted is named
    assert trainer.uploaded <= names(trainer.bucket)
    assert not p.deleted_prefixes & {n.rsplit(".", 1)[0] for n in names(trainer.bucket) if n.endswith(".index")}
    _tensorflow_restores_the_trainers_newest(trainer.bucket, trainer, values, tmp_path / "copy")


def test_a_state_that_keeps_changing_stops_the_prune_before_anything_is_deleted(race, monkeypatch):
    url, initial, trainer, _ = race
    p = plan(facts_from_directory(initial), max_to_keep=2)
    real_read = pruning.read_state_version

    def trainer_saves_after_every_read(directory, name="checkpoint"):
        version = real_read(directory, name)
        if len(trainer.saved) < len(trainer.steps):
            trainer.save_next()
        return version

    monkeypatch.setattr(pruning, "read_state_version", trainer_saves_after_every_read)
    keys_before = set(trainer.bucket.keys())
    with pytest.raises(ValueError, match="kept changing"):
        execute_plan(url, p, state_files=["checkpoint"])
    assert _state(trainer.bucket).latest == trainer.saved[-1]
    assert keys_before <= set(trainer.bucket.keys())  # nothing deleted


def test_a_trainer_saving_throughout_a_series_of_prunes_loses_nothing(race, tmp_path):
    url, initial, trainer, values = race
    facts = facts_from_directory(initial)
    stop = threading.Event()
    failures: list[BaseException] = []

    def train() -> None:
        try:
            while len(trainer.saved) < len(trainer.steps):
                trainer.save_next()
                time.sleep(0.1)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=train)
    thread.start()
    prunes, keep = 0, 5
    try:
        while not stop.is_set() or prunes < 3:
            try:
                execute_plan(url, plan(facts, max_to_keep=keep), state_files=["checkpoint"])
            except ValueError as exc:
                # On a loaded machine every attempt may lose the race: the prune then stops
                # before deleting anything, which is what it should do.
                assert "kept changing" in str(exc)
            prunes += 1
            keep = max(1, keep - 1)
    finally:
        thread.join(60)
    assert not failures, failures
    last = plan(facts, max_to_keep=1)
    execute_plan(url, last, state_files=["checkpoint"])

    state = _state(trainer.bucket)
    assert state.latest == trainer.saved[-1]
    assert set(trainer.saved) <= set(state.all_prefixes)
    assert trainer.uploaded <= names(trainer.bucket)
    left = {n.rsplit(".", 1)[0] for n in names(trainer.bucket) if n.endswith(".index")}
    assert left == {"model.ckpt-600", *trainer.saved}
    _tensorflow_restores_the_trainers_newest(trainer.bucket, trainer, values, tmp_path / "copy")
