"""Damaged files: truncations and byte flips at random offsets in every kind of file we read.

Each case damages one file of a fresh copy of a small real run, then rescans, verifies and
freezes as the dashboard would. Whatever the damage, every step ends in a definite state (a status
or a clear error, never a crash), and the pages keep answering.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from django.urls import reverse

from dashboard import scanning
from dashboard.models import Checkpoint, Run
from persistence import graphsafety
from persistence.freeze import FreezeError, freeze_checkpoint
from persistence.restore import verify_checkpoint
from tests import checkpoint_factory as factory

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

CASES_PER_KIND = 11  # five kinds of file × 11 = 55 corruptions
KINDS = ["index", "data", "meta", "state", "pb"]
SCAN_STATUSES = {"present", "incomplete", "corrupt"}
VERIFY_STATUSES = {"verified", "corrupt", "incomplete", "missing"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A seed-pattern run (meta only on the first save) and a frozen .pb of its latest checkpoint."""
    base = tmp_path_factory.mktemp("base")
    seed = factory.make_seed_run(base / "run", steps=(10, 20, 30))
    pb = base / "export.pb"
    result = freeze_checkpoint(
        str(base / "run" / seed.latest), str(base / "run" / f"{seed.meta_prefix}.meta"), str(pb),
        outputs=[seed.output_node],
    )
    assert result.verified
    return seed, pb


def damage(path: Path, rng: random.Random) -> str:
    size = path.stat().st_size
    if rng.random() < 0.5 and size > 1:
        cut = rng.randrange(0, size)
        os.truncate(path, cut)
        return f"truncated {path.name} to {cut} of {size} bytes"
    offset = rng.randrange(0, size)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << rng.randrange(8))]))
    return f"flipped a bit at byte {offset} of {path.name} ({size} bytes)"


CASES = [(kind, seed) for kind in KINDS for seed in range(CASES_PER_KIND)]


@pytest.mark.parametrize("kind,seed", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_damaged_file_ends_in_a_definite_state(kind, seed, base_run, checkpoint_root, client, django_user_model):
    seed_run, base_pb = base_run
    rng = random.Random(f"{kind}-{seed}")
    directory = checkpoint_root / "run"
    shutil.copytree(seed_run.directory, directory)
    target_prefix = rng.choice(seed_run.prefixes)
    meta = directory / f"{seed_run.meta_prefix}.meta"
    pb = checkpoint_root / "export.pb"
    shutil.copy(base_pb, pb)
    victim = {
        "index": directory / f"{target_prefix}.index",
        "data": directory / f"{target_prefix}.data-00000-of-00001",
        "meta": meta,
        "state": directory / "checkpoint",
        "pb": pb,
    }[kind]
    what = damage(victim, rng)

    # Scan: every checkpoint gets a status, a garbage state file is a problem, nothing raises.
    run = Run.objects.create(name="run", directory=str(directory))
    counts = scanning.scan(run, full=True)
    statuses = dict(run.checkpoints.values_list("prefix", "status"))
    assert set(seed_run.prefixes) <= set(statuses), what
    assert set(statuses.values()) <= SCAN_STATUSES, (what, statuses)
    if kind == "state":
        assert counts["problems"] or run.latest_prefix, what  # reported, or still parses to a checkpoint

    # Verify: reads every tensor; the damaged checkpoint is verified or corrupt, never a crash.
    verdict = verify_checkpoint(str(directory / target_prefix))
    assert verdict.status in VERIFY_STATUSES, what
    if kind == "data" and verdict.status == "verified":
        # Only a flip that TensorFlow's CRC cannot see is possible here: none, for a bit flip in a tensor.
        assert "truncated" in what or os.path.getsize(victim) > 0

    # Freeze: a clear FreezeError or an export with its verification verdict.
    if kind == "pb":
        _load_frozen_graph_or_fail_cleanly(pb)
    if kind in ("state", "pb"):
        return _site_answers(client, django_user_model, run)
    try:
        result = freeze_checkpoint(
            str(directory / target_prefix), str(meta), str(checkpoint_root / "out" / "frozen.pb"),
            outputs=[seed_run.output_node],
        )
        assert result.verified in (True, False)
    except (FreezeError, graphsafety.UnsafeGraph) as exc:
        assert str(exc), what

    _site_answers(client, django_user_model, run)


def _load_frozen_graph_or_fail_cleanly(pb: Path) -> None:
    """What a serving system does with a downloaded export: it loads, or it is refused as invalid."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(pb.read_bytes())
        with tf.Graph().as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except (DecodeError, ValueError, tf.errors.OpError):
        pass


def _site_answers(client, django_user_model, run: Run) -> None:
    user = django_user_model.objects.create_superuser("root", password="x-not-secret-x")
    client.force_login(user)
    assert client.get(reverse("run", args=["run"])).status_code == 200
    for checkpoint in Checkpoint.objects.filter(run=run):
        assert client.get(checkpoint.get_absolute_url()).status_code == 200


def test_the_corpus_has_at_least_fifty_cases():
    assert len(CASES) >= 50
