"""Property: prunes and save-job rotations together never delete a protected checkpoint.

Random sequences of saves (the save job's own guard around ``persistence.training.train``), pins,
exports and prunes (``retention.plan_retention`` + ``pruning.apply_plan``) run against real TensorFlow
checkpoints and the real database. After every step, every checkpoint ever pinned or exported is
whole on disk, every ``.meta`` a checkpoint on disk restores with exists, and TensorFlow's
``latest_checkpoint`` names a checkpoint on disk.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import pruning, recording, retention, saving
from dashboard.models import Checkpoint, Export, Run

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

SAVE = st.tuples(st.just("save"), st.sampled_from([1, 2, 3]), st.sampled_from(["always", "first"]))
PIN = st.tuples(st.just("pin"), st.integers(0, 20))
EXPORT = st.tuples(st.just("export"), st.integers(0, 20))
PRUNE = st.tuples(st.just("prune"), st.sampled_from([1, 2]))
OPERATIONS = st.lists(st.one_of(SAVE, PIN, EXPORT, PRUNE), min_size=1, max_size=5)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


def _save(run: Run, max_to_keep: int, write_meta: str) -> None:
    from persistence.recipes.antispam import AntiSpamRecipe
    from persistence.training import SaverOptions, train

    latest = run.checkpoints.on_disk().exclude(step=None).order_by("-step").first()
    written: set[str] = set()
    guard = saving.rotation_guard(run, own=written, state_file="checkpoint")

    def on_saved(saved) -> None:
        recording.record_saved(run, saved)
        written.add(saved.prefix)

    train(run.directory, AntiSpamRecipe(), steps=10, save_every=5,
          options=SaverOptions(max_to_keep=max_to_keep, write_meta_graph=write_meta),
          restore_from=latest.path if latest is not None else None, on_saved=on_saved, rotation_guard=guard)


def _check(run: Run, protected: set[str]) -> None:
    names = set(os.listdir(run.directory))
    for prefix in protected:
        assert f"{prefix}.index" in names and f"{prefix}.data-00000-of-00001" in names, prefix
        assert run.checkpoints.get(prefix=prefix).status != Checkpoint.PRUNED, prefix
    for row in run.checkpoints.on_disk().select_related("meta_source"):
        assert f"{row.prefix}.index" in names, row.prefix
        if row.meta_source is not None:
            assert f"{row.meta_source.prefix}.meta" in names, (row.prefix, row.meta_source.prefix)
    latest = _tf().train.latest_checkpoint(run.directory)
    assert latest is None or os.path.exists(latest + ".index")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_prunes_and_saves_never_delete_what_is_protected(operations, checkpoint_root):
    directory = checkpoint_root / f"prop-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    run = Run.objects.create(name=directory.name, directory=str(directory))
    protected: set[str] = set()
    for operation in [("save", 2, "first"), *operations]:
        kind = operation[0]
        on_disk = list(run.checkpoints.on_disk().order_by("step"))
        if kind == "save":
            _save(run, operation[1], operation[2])
        elif kind == "pin" and on_disk:
            row = on_disk[operation[1] % len(on_disk)]
            pruning.pin(row, "property")
            protected.add(row.prefix)
        elif kind == "export" and on_disk:
            row = on_disk[operation[1] % len(on_disk)]
            # One export row per file: exporting the same checkpoint again refreshes it.
            Export.objects.update_or_create(path=str(directory / f"{row.prefix}.pb"),
                                            defaults={"checkpoint": row, "sha256": "0" * 64})
            protected.add(row.prefix)
        elif kind == "prune":
            run.refresh_from_db()
            plan = retention.plan_retention(run, policy=retention.retention_policy(run, max_to_keep=operation[1], min_age_seconds=0))
            pruning.apply_plan(run, plan)
        _check(run, protected)
