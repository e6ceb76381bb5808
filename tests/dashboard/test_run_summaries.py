"""The cached run summary and metric sort rows equal what the checkpoint rows say, after every kind
of change: scans (new, changed, missing rows), save jobs recording checkpoints, prunes, verify,
metrics attached, and a run's deletion; and ``rebuild_summaries`` repairs rows written around them."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import shutil
import time

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from dashboard import artifacts, pruning, recording, retention, scanning, summaries
from dashboard.models import Checkpoint, MetricValue, Run, RunSummary
from persistence.training import SavedCheckpoint
from tests.checkpoint_factory import make_many_tiny_checkpoints

pytestmark = pytest.mark.django_db

DATA = ".data-00000-of-00001"


def expected_summary(run: Run) -> dict:
    """The summary computed plainly in Python from every row of the run."""
    rows = list(run.checkpoints.values("status", "size_bytes", "step", "recorded_at", "saved_at"))
    on_disk = [r for r in rows if r["status"] not in Checkpoint.GONE]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "checkpoint_count": len(rows),
        "on_disk_count": len(on_disk),
        "on_disk_bytes": sum(r["size_bytes"] for r in on_disk),
        "latest_step": max((r["step"] for r in on_disk if r["step"] is not None), default=None),
        "last_recorded": max((r["recorded_at"] for r in on_disk), default=None),
        "last_activity": max((r["saved_at"] for r in rows), default=None),
        "status_counts": counts,
        "stepless_count": sum(r["step"] is None for r in rows),
    }


def expected_metric_rows(run: Run) -> list[tuple]:
    return sorted(
        (pk, name, float(value))
        for pk, metrics in run.checkpoints.values_list("id", "metrics")
        for name, value in (metrics or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def assert_cache_is_fresh(run: Run) -> None:
    cached = RunSummary.objects.get(run=run)
    expected = expected_summary(run)
    assert {name: getattr(cached, name) for name in expected} == expected
    stored = sorted(MetricValue.objects.filter(run=run).values_list("checkpoint_id", "name", "value"))
    assert stored == expected_metric_rows(run)


def copy_as_step(template: str, directory: str, step: int) -> SavedCheckpoint:
    """A save job's write of a new step: a checkpoint's index and data under a new prefix."""
    prefix = f"model.ckpt-{step}"
    for suffix in (".index", DATA):
        shutil.copyfile(template + suffix, os.path.join(directory, prefix + suffix))
    files = [prefix + ".index", prefix + DATA]
    return SavedCheckpoint(
        prefix=prefix, path=os.path.join(directory, prefix), step=step,
        metrics={"loss": 1.0 / step, "accuracy": 0.5, "note": "text is not a sortable metric"},
        files=files, meta_source="model.ckpt-1", saved_at=time.time(),
        size_bytes=sum(os.path.getsize(os.path.join(directory, f)) for f in files),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_summary_equals_a_fresh_aggregate_after_every_change(checkpoint_root, seed):
    """A random sequence of the operations that change checkpoint rows; the cache is checked after each."""
    rng = random.Random(seed)
    directory = str(checkpoint_root / f"seq{seed}")
    make_many_tiny_checkpoints(directory, 8)
    template = str(checkpoint_root / f"template{seed}")  # prunes may delete model.ckpt-1's own files
    for suffix in (".index", DATA):
        shutil.copyfile(os.path.join(directory, "model.ckpt-1" + suffix), template + suffix)
    run = Run.objects.create(name=f"seq{seed}", directory=directory, min_age_seconds=0)
    scanning.scan(run)
    assert_cache_is_fresh(run)
    next_step, verified = 100, False
    for _ in range(10):
        on_disk = list(run.checkpoints.on_disk().exclude(prefix="model.ckpt-1").values_list("prefix", flat=True))
        action = rng.choice(["save", "delete_files", "scan", "prune", "metrics", "verify"])
        if action == "save":
            recording.record_saved(run, copy_as_step(template, directory, next_step))
            next_step += rng.choice([1, 5])
        elif action == "delete_files" and on_disk:
            prefix = rng.choice(on_disk)
            for suffix in (".index", DATA):
                os.remove(os.path.join(directory, prefix + suffix))
            scanning.scan(run, full=rng.random() < 0.5)
        elif action == "scan":
            scanning.scan(run, full=True)
        elif action == "prune":
            run.refresh_from_db()
            run.max_to_keep = rng.randint(1, 4)
            run.save(update_fields=["max_to_keep"])
            pruning.apply_plan(run, retention.plan_retention(run))
        elif action == "metrics" and on_disk:
            chosen = rng.sample(on_disk, min(3, len(on_disk)))
            recording.record_metrics(run, {p: {"loss": rng.choice([0.5, 0.25]), "flag": True} for p in chosen})
        elif action == "verify" and on_disk and not verified:
            verified = True  # one sandboxed TensorFlow read per sequence is enough
            artifacts.verify(run.checkpoints.get(prefix=rng.choice(on_disk)))
        run.refresh_from_db()
        assert_cache_is_fresh(run)

    run_id = run.pk
    run.delete()
    assert not RunSummary.objects.filter(run_id=run_id).exists()
    assert not MetricValue.objects.filter(run_id=run_id).exists()


def test_rows_gone_missing_and_verified_move_the_counts(checkpoint_root):
    directory = str(checkpoint_root / "counts")
    make_many_tiny_checkpoints(directory, 5)
    run = Run.objects.create(name="counts", directory=directory, min_age_seconds=0)
    scanning.scan(run)
    summary = RunSummary.objects.get(run=run)
    assert (summary.on_disk_count, summary.checkpoint_count, summary.latest_step) == (5, 5, 5)
    for suffix in (".index", DATA):
        os.remove(os.path.join(directory, "model.ckpt-5" + suffix))
    scanning.scan(run)
    summary.refresh_from_db()
    assert (summary.on_disk_count, summary.checkpoint_count, summary.latest_step) == (4, 5, 4)
    assert sum(summary.status_counts.get(s, 0) for s in Checkpoint.GONE) == 1
    artifacts.verify(run.checkpoints.get(prefix="model.ckpt-2"))
    summary.refresh_from_db()
    assert summary.status_counts[Checkpoint.VERIFIED] == 1


def test_rebuild_repairs_rows_written_around_the_operations(checkpoint_root, capsys):
    run = Run.objects.create(name="raw", directory=str(checkpoint_root / "raw"))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    Checkpoint.objects.bulk_create(
        Checkpoint(run=run, prefix=f"p-{i}", step=i if i % 4 else None, saved_at=base + dt.timedelta(seconds=i),
                   size_bytes=10 * i, status=Checkpoint.PRUNED if i < 3 else Checkpoint.PRESENT,
                   metrics={"loss": i / 7, "ok": True, "name": "x"})
        for i in range(12)
    )
    assert not RunSummary.objects.filter(run=run).exists()
    call_command("rebuild_summaries")
    assert_cache_is_fresh(run)
    Checkpoint.objects.filter(run=run, step=5).update(status=Checkpoint.MISSING, metrics={"loss": 2.0})
    call_command("rebuild_summaries", "raw")
    assert_cache_is_fresh(run)
    assert "1 run" in capsys.readouterr().out


def test_a_full_rebuild_keeps_the_metric_rows_constraints_and_indexes(checkpoint_root):
    """Rebuilding every run's metric rows (which sets the table's indexes and constraints aside
    while it fills it) leaves them as they were and still enforced, also in a transaction that
    wrote metric rows just before (their foreign-key checks still queued)."""
    run = Run.objects.create(name="full", directory=str(checkpoint_root / "full"))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    Checkpoint.objects.bulk_create(
        Checkpoint(run=run, prefix=f"p-{i}", step=i, saved_at=base + dt.timedelta(seconds=i),
                   metrics={"loss": i / 3, "acc": i, "flag": False})
        for i in range(6)
    )
    first = run.checkpoints.order_by("step").first()
    summaries.record_metric_values(run.pk, [(first.pk, {"stale": 1.0})])  # queued checks on PostgreSQL
    table = MetricValue._meta.db_table
    with connection.cursor() as cursor:
        before = connection.introspection.get_constraints(cursor, table)
    assert any(c["unique"] and c["columns"] == ["checkpoint_id", "name"] for c in before.values())

    summaries.rebuild()

    with connection.cursor() as cursor:
        assert connection.introspection.get_constraints(cursor, table) == before
    assert_cache_is_fresh(run)
    with pytest.raises(IntegrityError), transaction.atomic():
        MetricValue.objects.create(run=run, checkpoint=first, name="loss", value=0.0)
    with pytest.raises(IntegrityError), transaction.atomic():
        MetricValue.objects.create(run=run, checkpoint_id=first.pk + 10_000, name="orphan", value=0.0)
        connection.check_constraints(table_names=[table])


def test_a_scan_in_many_chunks_ends_exact_and_one_cut_short_is_caught_up(checkpoint_root, monkeypatch):
    """Refreshed at most every few seconds while chunks are stored, the summary is exact when the scan
    ends; a scan that stored some chunks and then failed leaves it behind, and the next scan of the
    (changed) directory catches it up although every row it finds is already known."""
    directory = str(checkpoint_root / "chunks")
    make_many_tiny_checkpoints(directory, 12)
    monkeypatch.setattr(scanning, "SCAN_STORE_ROWS", 3)
    monkeypatch.setattr(scanning, "SUMMARY_REFRESH_SECONDS", 3600.0)  # none between chunks
    run = Run.objects.create(name="chunks", directory=directory, min_age_seconds=0)
    scanning.scan(run)
    assert_cache_is_fresh(run)

    # A summary left behind, as by a scan whose last transaction never ran.
    RunSummary.objects.filter(run=run).update(checkpoint_count=3, on_disk_count=3, latest_step=3)
    open(os.path.join(directory, "notes.txt"), "w").close()  # the directory changed; no checkpoint did
    time.sleep(1.1)  # past the directory stamp's settle time
    run.refresh_from_db()
    assert scanning.scan(run)["created"] == 0
    assert_cache_is_fresh(run)
