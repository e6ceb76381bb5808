"""Only damaged bytes make a checkpoint corrupt; a read that merely failed is ``unreadable``.

The failed reads here are real: a data shard that is a directory (EISDIR, which root cannot
override either), and files with mode 000 read by a child process that has dropped root's power to
ignore permissions (EACCES). The damage is real too: a flipped byte, a truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from persistence import damage
from persistence.discovery import CORRUPT, PRESENT, UNREADABLE, scan_directory
from persistence.restore import verify_checkpoint
from tests import checkpoint_factory as factory
from tests.live import BASE_DIR, without_file_permission_override

pytestmark = pytest.mark.tf

DATA = ".data-00000-of-00001"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return factory.make_seed_run(tmp_path_factory.mktemp("read-errors") / "seed", steps=(10, 20))


@pytest.fixture
def seed(template, tmp_path):
    directory = tmp_path / "seed"
    shutil.copytree(template.directory, directory)
    return directory


def flip_one_byte(path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        # What TensorFlow 2.21's checkpoint reader raises (bare OpError, code UNKNOWN) for damage.
        (RuntimeError("TensorBundle at /r/m shard 0 (64 bytes): Checksum does not match: stored 1 vs. calculated 2"),
         damage.CORRUPT),
        (IndexError("Read less bytes than requested"), damage.CORRUPT),
        (RuntimeError("block checksum mismatch"), damage.CORRUPT),
        (RuntimeError("file is too short to be an sstable"), damage.CORRUPT),
        (RuntimeError("not an sstable (bad magic number)"), damage.CORRUPT),
        (RuntimeError("Unable to read file (/r/m.index). Perhaps the file is corrupt or was produced by a newer "
                      "version of TensorFlow with format changes (failed to seek to header entry)"), damage.CORRUPT),
        # Conditions of the machine, not of the bytes.
        (RuntimeError("/r/m.data-00000-of-00001; Permission denied"), damage.UNREADABLE),
        (RuntimeError("/r/m.data-00000-of-00001; Input/output error"), damage.UNREADABLE),
        (RuntimeError("Unable to open table file /r/m.index: PERMISSION_DENIED: /r/m.index; Permission denied"),
         damage.UNREADABLE),
        (RuntimeError("/nfs/m.index; Connection timed out"), damage.UNREADABLE),
        (RuntimeError("/nfs/m.index; Stale file handle"), damage.UNREADABLE),
        (MemoryError(), damage.UNREADABLE),
        (PermissionError(13, "Permission denied"), damage.UNREADABLE),
        (OSError(5, "Input/output error"), damage.UNREADABLE),
        # No evidence of damage: not corrupt. Paths do not count as evidence.
        (RuntimeError("something nobody has seen before"), damage.UNREADABLE),
        (RuntimeError("/runs/corrupt-truncated-crc/m.index; Permission denied"), damage.UNREADABLE),
        (RuntimeError("/runs/corrupt-truncated/m.index: weird failure"), damage.UNREADABLE),
    ],
)
def test_classify_calls_only_damage_corrupt(exc, verdict):
    assert damage.classify(exc).verdict == verdict


def test_data_shard_that_cannot_be_read_is_unreadable_not_corrupt(seed):
    data = seed / f"model.ckpt-20{DATA}"
    data.unlink()
    data.mkdir()  # reading it fails with EISDIR, an I/O condition, whatever the bytes would be

    result = verify_checkpoint(str(seed / "model.ckpt-20"))

    assert result.status == UNREADABLE, result.message
    assert "Is a directory" in result.message and result.failed_tensor


def test_flipped_byte_and_truncations_are_still_corrupt(seed):
    flip_one_byte(seed / f"model.ckpt-20{DATA}")
    os.truncate(seed / f"model.ckpt-10{DATA}", 10)
    assert verify_checkpoint(str(seed / "model.ckpt-20")).status == CORRUPT
    assert verify_checkpoint(str(seed / "model.ckpt-10")).status == CORRUPT
    factory.truncate_index(str(seed / "model.ckpt-20"))
    assert verify_checkpoint(str(seed / "model.ckpt-20")).status == CORRUPT


def test_missing_data_shard_is_still_incomplete(seed):
    factory.delete_data_shard(str(seed / "model.ckpt-20"))
    assert verify_checkpoint(str(seed / "model.ckpt-20")).status == "incomplete"


CHILD = textwrap.dedent("""
    import json, sys
    from persistence.discovery import scan_directory
    from persistence.restore import verify_checkpoint
    directory = sys.argv[1]
    verified = verify_checkpoint(directory + "/model.ckpt-20")
    scanned = {c.prefix: (c.status, c.fingerprint, c.problems) for c in scan_directory(directory).checkpoints}
    print(json.dumps({"verify": [verified.status, verified.message], "scan": scanned}))
""")


def test_permission_denied_is_unreadable_for_verify_and_scan(seed):
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here (setpriv)")
    os.chmod(seed / f"model.ckpt-20{DATA}", 0)
    os.chmod(seed / "model.ckpt-10.index", 0)

    child = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(seed)], cwd=BASE_DIR, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])

    status, message = out["verify"]
    assert status == UNREADABLE and "Permission denied" in message
    scanned = out["scan"]
    status, fingerprint, problems = scanned["model.ckpt-10"]
    assert status == UNREADABLE and "Permission denied" in problems[0]
    assert scanned["model.ckpt-20"][0] == PRESENT  # its index is readable; data is not read by a scan

    # Readable again: the next scan reads the index (the unreadable outcome was not cached).
    os.chmod(seed / "model.ckpt-10.index", 0o644)
    again = {c.prefix: c for c in scan_directory(str(seed), known={"model.ckpt-10": fingerprint}).checkpoints}
    assert again["model.ckpt-10"].status == PRESENT and not again["model.ckpt-10"].unchanged
