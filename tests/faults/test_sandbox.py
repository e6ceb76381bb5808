"""Graph-executing work runs in a limited child: no network, no writes outside scratch, bounded memory,
no more file access than its caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.test import override_settings

from dashboard import artifacts, scanning
from dashboard.models import Checkpoint, Run
from persistence import restore, sandbox
from tests import checkpoint_factory as factory
from tests.faults.sandbox_probes import connect_out, listen, read_file
from tests.live import BASE_DIR, subprocess_env, without_file_permission_override

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


def _require_sandbox() -> None:
    available, reason = sandbox.sandbox_available()
    if not available:
        pytest.skip(f"the kernel refuses the sandbox here: {reason}")


def _writing_run(root, outside: str) -> Run:
    """A trusted run whose graph writes ``outside`` (WriteFile, behind a control dependency) when run."""
    import tensorflow as tf

    v1 = tf.compat.v1
    directory = root / "writer"
    directory.mkdir()
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=tf.ones([2, 2]))
        write = tf.io.write_file(outside, "written from a graph")
        with tf.control_dependencies([write]):
            tf.identity(tf.matmul(x, w), name="probs")
        sess.run(v1.global_variables_initializer())
        v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1)
    run = Run.objects.create(name="writer", directory=str(directory), trusted=True)
    scanning.scan(run)
    return run


def test_graph_job_cannot_write_outside_its_scratch_directory(checkpoint_root, tmp_path):
    _require_sandbox()
    outside = str(tmp_path / "outside.txt")
    run = _writing_run(checkpoint_root, outside)
    checkpoint = run.checkpoints.get()

    verification = artifacts.verify(checkpoint, output="probs")

    assert verification["status"] == "verified"  # the tensors are sound; running the graph is not
    assert verification["restore"]["ok"] is False
    assert "Permission denied" in verification["restore"]["error"]
    assert not os.path.exists(outside)


def test_graph_process_cannot_reach_the_network():
    _require_sandbox()
    limits = sandbox.SandboxLimits(memory_bytes=None, cpu_seconds=30)
    assert connect_out().startswith(("connected", "refused"))  # the probe itself works here
    assert sandbox.run_sandboxed(connect_out, limits=limits).startswith("refused")
    assert sandbox.run_sandboxed(listen, limits=limits).startswith("refused")


# Run by a caller that cannot read the file itself: the file's reading, and the sandboxed child's.
_READ_AS_CALLER = """
import json, sys
from persistence import sandbox
from tests.faults.sandbox_probes import read_file
if sys.argv[2] == "fork server":
    sandbox._tensorflow_threads_started = lambda: True  # as in a process that has run a session
report = sandbox.SandboxReport()
child = sandbox.run_sandboxed(read_file, sys.argv[1], report=report,
                              limits=sandbox.SandboxLimits(memory_bytes=None, cpu_seconds=60))
print(json.dumps({"caller": read_file(sys.argv[1]), "child": child, "fork_server": report.fork_server,
                  "network_isolated": report.network_isolated,
                  "capabilities_dropped": report.capabilities_dropped}))
"""


@pytest.mark.parametrize("via", ["fork", "fork server"])
def test_graph_process_cannot_read_a_file_its_caller_cannot_read(tmp_path, via):
    # In its user namespace the child holds every capability over files whose owner is mapped
    # there (uid 0 as uid 0 for a root worker): it must give them up, or a mode-000 file the worker
    # itself cannot read would be readable to the graph.
    _require_sandbox()
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here (setpriv)")
    secret = tmp_path / "secret"
    secret.write_text("not for the graph")
    secret.chmod(0)

    done = subprocess.run([*prefix, sys.executable, "-c", _READ_AS_CALLER, str(secret), via],
                          capture_output=True, text=True, timeout=180, cwd=BASE_DIR, env=subprocess_env())

    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["caller"] == "refused: Permission denied"
    assert seen["child"] == "refused: Permission denied"
    assert seen["fork_server"] is (via == "fork server")
    assert seen["network_isolated"] and seen["capabilities_dropped"]
    secret.chmod(0o600)
    assert sandbox.run_sandboxed(read_file, str(secret), limits=sandbox.SandboxLimits(
        memory_bytes=None, cpu_seconds=60)) == "read 17 bytes"  # the probe reads what it may


def test_memory_bomb_index_is_refused_before_reading_with_bounded_memory(checkpoint_root):
    directory = checkpoint_root / "bomb"
    directory.mkdir()
    prefix = factory.write_declaring_index(directory / "model.ckpt-5")
    assert os.path.getsize(prefix + ".index") < 200
    run = Run.objects.create(name="bomb", directory=str(directory))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()

    verification = artifacts.verify(checkpoint)

    checkpoint.refresh_from_db()
    assert checkpoint.status == Checkpoint.CORRUPT
    assert "declares shape [16383, 12000]" in verification["message"]
    assert "its shard model.ckpt-5.data-00000-of-00001 has 8 bytes" in verification["message"]
    # The same read, measured: the child never grows towards the gigabytes the shape declares.
    report = sandbox.SandboxReport()
    result = sandbox.run_sandboxed(restore.verify_checkpoint, prefix, report=report,
                                   limits=artifacts.sandbox_limits(checkpoint))
    assert result.status == restore.CORRUPT
    assert 0 < report.peak_rss_bytes < 1536 * 2**20


def test_memory_limit_stops_a_read_with_a_clear_message_and_keeps_the_status(checkpoint_root):
    # A consistent checkpoint (64 MB shard for a 64 MB float tensor) that needs more memory than
    # the limit allows: not corrupt, just bigger than we let a read be.
    directory = checkpoint_root / "big"
    directory.mkdir()
    import tensorflow as tf

    elements = 16 * 2**20
    # Saved by TensorFlow itself: its CRC of the 64 MB shard takes milliseconds where a hand-made
    # index's bitwise one in Python took minutes.
    tf.raw_ops.SaveV2(prefix=str(directory / "model.ckpt-1"), tensor_names=["big"], shape_and_slices=[""],
                      tensors=[tf.zeros([elements], tf.float32)])
    assert os.path.getsize(directory / "model.ckpt-1.data-00000-of-00001") == elements * 4
    run = Run.objects.create(name="big", directory=str(directory))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()
    before = checkpoint.status

    with override_settings(GRAPH_MEMORY_LIMIT_BASE_MB=256, GRAPH_MEMORY_LIMIT_FACTOR=0), \
            pytest.raises(sandbox.SandboxError, match=r"ran out of the 256 MB memory limit") as caught:
        artifacts.verify(checkpoint)

    assert caught.value.reason == "memory"
    checkpoint.refresh_from_db()
    assert checkpoint.status == before != Checkpoint.CORRUPT
