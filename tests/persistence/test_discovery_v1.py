"""Checkpoints in TensorFlow's V1 format (one file, no ``.index``) are discovered and described."""

from __future__ import annotations

import pytest

from persistence import discovery
from tests.checkpoint_factory import make_v1_run

pytestmark = pytest.mark.tf


def test_v1_checkpoints_are_recorded_with_step_size_and_variables(tmp_path):
    import tensorflow as tf

    made = make_v1_run(tmp_path / "v1")
    result = discovery.scan_directory(made.directory)

    assert [c.prefix for c in result.checkpoints] == made.prefixes
    assert result.format == discovery.TF1 and not result.problems and not result.orphans
    for c, step in zip(result.checkpoints, made.steps, strict=True):
        assert (c.step, c.status, c.format) == (step, discovery.PRESENT, discovery.TF1_V1)
        assert [f.name for f in c.files] == [c.prefix, f"{c.prefix}.meta"]
        assert c.size_bytes == sum(f.size for f in c.files) and c.has_own_meta and c.meta_source == c.prefix
        # The same variables TensorFlow itself lists for the file.
        listed = dict(tf.train.list_variables(f"{made.directory}/{c.prefix}"))
        assert {v.name: v.shape for v in c.variables} == {n: tuple(s) for n, s in listed.items()}
        assert {v.name: v.shape for v in c.variables} == made.variables
    assert result.state_files[0].latest == made.prefixes[-1] and not result.state_files[0].problem


def test_v1_rescan_is_incremental_and_the_forked_reader_agrees(tmp_path):
    made = make_v1_run(tmp_path / "v1")
    first = discovery.scan_directory(made.directory)
    again = discovery.scan_directory(made.directory, known={c.prefix: c.fingerprint for c in first.checkpoints})
    assert all(c.unchanged and c.format == discovery.TF1_V1 for c in again.checkpoints)

    listing = discovery.list_directory(made.directory)
    forked = [c for chunk in discovery.describe_chunks(listing, fork_from=1, only_when_idle=False, chunk_size=1)
              for c in chunk]
    assert sorted((c.prefix, c.format, len(c.variables)) for c in forked) == [
        (p, discovery.TF1_V1, 2) for p in made.prefixes]


def test_other_files_that_merely_look_like_checkpoints_are_not_taken_for_v1(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes-1").write_bytes(b"x" * 100)  # a step-like name, not a table
    (run / "model.ckpt-5.meta").write_bytes(b"y" * 10)
    (run / "model.ckpt-5").write_bytes(b"\0" * 200)  # beside a .meta, but no table magic
    result = discovery.scan_directory(str(run))
    assert result.checkpoints == []


def test_a_sharded_v1_checkpoint_is_reported_as_not_supported(tmp_path):
    import tensorflow as tf

    directory = tmp_path / "sharded"
    directory.mkdir()
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("w", [3, 4])
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1, sharded=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(directory / "model.ckpt"), global_step=10)
    result = discovery.scan_directory(str(directory))
    assert result.checkpoints == []
    assert any("model.ckpt-10-00000-of-00001: a sharded checkpoint in TensorFlow's V1 format, which is not "
               "supported" in p for p in result.problems)
