"""``kill -9`` of the work horse in the middle of a freeze, with a real forked worker.

The freeze writes its ``.pb`` to a temporary file beside the target and renames it only after it
was verified, so the kill — sent the moment that temporary file appears — leaves nothing at the
final path. The job turns ``failed`` (the reconciler is called here instead of waiting for cron);
the next freeze into the same directory removes the dead one's temporary file and succeeds.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from dashboard import jobs, scanning
from dashboard.models import Export, Job, Run
from persistence.files import TEMP_MARKER
from tests.live import LiveWorker, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RECONCILE_DEADLINE = 120
# Large enough that writing, fsyncing and verifying the .pb takes a good fraction of a second.
HIDDEN_UNITS = 8192  # x [?, 2048] @ kernel [2048, 8192] float32: 64 MiB of variables


def make_large_checkpoint(directory) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    directory.mkdir(parents=True)
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 2048], name="x")
        # An initializer op, not a constant: the .meta stays small however large the variable.
        kernel = v1.get_variable("kernel", [2048, HIDDEN_UNITS], initializer=v1.random_uniform_initializer(seed=1))
        tf.nn.softmax(tf.matmul(x, kernel), name="probs")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1)


def temp_files(directory) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if TEMP_MARKER in n]
    except FileNotFoundError:
        return []


def reconcile_until_failed(job: Job) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RECONCILE_DEADLINE:
        jobs.reconcile_jobs()
        job.refresh_from_db()
        if job.status != Job.RUNNING:
            break
        time.sleep(0.5)
    assert job.status == Job.FAILED, (job.status, job.message, job.error)
    return time.monotonic() - started


def test_kill_9_mid_freeze_leaves_no_pb_and_the_next_freeze_cleans_up(tmp_path, settings):
    root = (tmp_path / "checkpoints").resolve()
    settings.CHECKPOINT_ROOTS = [root]
    settings.EXPORT_ROOT = (tmp_path / "exports").resolve()
    name = f"big-{uuid.uuid4().hex[:6]}"
    make_large_checkpoint(root / name)
    run = Run.objects.create(name=name, directory=str(root / name))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()
    target_dir = settings.EXPORT_ROOT / name / "1"
    final = target_dir / "probs.pb"

    worker = LiveWorker(log_path=tmp_path / "worker.log").start()
    try:
        job = jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]})
        # The moment the temporary .pb exists the freeze is writing (or verifying) it: kill then.
        stray = wait_for(lambda: temp_files(target_dir), 120, interval=0.002, what="the freeze's temporary file")
        horses = worker.horse_pids()
        assert horses, "no work horse to kill"
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        job.refresh_from_db()
        assert job.status == Job.RUNNING and job.progress > 0, (job.status, job.progress)

        elapsed = reconcile_until_failed(job)

        assert elapsed < RECONCILE_DEADLINE
        assert "killed" in job.error and job.ended_at
        assert not final.exists(), "a partial .pb at the final path"
        assert temp_files(target_dir) == stray  # the dead writer's leftover, until the next freeze
        assert not Export.objects.exists()

        again = jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]})
        wait_for(lambda: (again.refresh_from_db() or again.is_ended), 180, interval=0.2, what="the second freeze")
    finally:
        worker.stop()

    assert again.status == Job.FINISHED, again.error
    export = Export.objects.get()
    assert export.path == str(final) and final.is_file() and export.verified
    assert export.size_bytes == final.stat().st_size > 64 * 2**20
    assert export.verification["stale_temp_files_removed"] == stray
    assert temp_files(target_dir) == []
