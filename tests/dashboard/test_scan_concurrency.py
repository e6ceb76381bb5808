"""Scans running at the same time as other writers of the same run: another scan, a save job, a
pin, a prune. Real checkpoints, the real database (run the module on PostgreSQL too), real Redis
and real worker processes. ``SCAN_CHUNK_DELAY_SECONDS`` makes a scan of a few thousand tiny
checkpoints last seconds, as a scan of a big run on a slow file system does.
"""

from __future__ import annotations

import io
import os
import time
import uuid

import pytest
from django.core.management import call_command
from django.db.models import Count
from django.utils import timezone

from dashboard import jobs, pruning, retention, scanning
from dashboard.models import Checkpoint, Job, Run
from tests import checkpoint_factory as factory
from tests.dashboard import job_recipes as recipes
from tests.live import LiveWorker, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def root(tmp_path, settings):
    root = (tmp_path / "checkpoints").resolve()
    root.mkdir()
    settings.CHECKPOINT_ROOTS = [root]
    settings.CHECKPOINT_RECIPES = recipes.ALL
    return root


def new_run(root, **policy) -> Run:
    name = f"busy-{uuid.uuid4().hex[:6]}"
    (root / name).mkdir()
    run = Run.objects.create(name=name, directory=str(root / name))
    if policy:
        Run.objects.filter(pk=run.pk).update(**policy)
        run.refresh_from_db()
    return run


def indexes_on_disk(run: Run) -> set[str]:
    return {n[: -len(".index")] for n in os.listdir(run.directory) if n.endswith(".index")}


def test_two_scans_and_a_save_job_at_once_record_every_checkpoint_once(root, tmp_path, settings):
    run = new_run(root)
    factory.make_many_tiny_checkpoints(run.directory, 1000, family="older.ckpt", hardlink=True)
    slow = {"SCAN_CHUNK_DELAY_SECONDS": "0.4", "SLOW_RECIPE_STEP_DELAY": "0.02"}
    settings.SCAN_CHUNK_DELAY_SECONDS = 0.4
    first = recipes.start_worker(root, tmp_path / "first.log", **slow)
    second = recipes.start_worker(root, tmp_path / "second.log", **slow)
    try:
        save = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.SLOW, steps=200, save_every=10))
        scan = jobs.start(Job.SCAN, run=run)
        wait_for(lambda: Job.objects.filter(pk__in=[save.pk, scan.pk], status=Job.RUNNING).count() == 2, 120,
                 what="the save and the scan job to run side by side")
        # A second scan of the same run (the command; the periodic rescan is the same operation).
        call_command("scan", run.directory, "--name", run.name, stdout=io.StringIO())
        recipes.wait_for_job(scan, Job.ENDED, timeout=120)
        recipes.wait_for_job(save, Job.ENDED, timeout=180)
    finally:
        first.stop()
        second.stop()

    assert scan.status == Job.FINISHED, scan.error
    assert save.status == Job.FINISHED, save.error
    duplicates = run.checkpoints.values("prefix").annotate(n=Count("id")).filter(n__gt=1)
    assert not duplicates.exists()
    assert set(run.checkpoints.on_disk().values_list("prefix", flat=True)) == indexes_on_disk(run)
    saved = [s["prefix"] for s in save.result["saved"]]
    assert len(saved) == 20 and run.checkpoints.filter(prefix__in=saved, status=Checkpoint.PRESENT).count() == 20


def test_a_pin_during_a_long_scan_waits_for_one_chunk_not_the_whole_scan(root, tmp_path):
    run = new_run(root)
    factory.make_many_tiny_checkpoints(run.directory, 5, family="first.ckpt", hardlink=True)
    scanning.scan(run)
    target = run.checkpoints.get(prefix="first.ckpt-5")
    # Fewer than discovery.FORK_FROM: read in the worker's own process, chunk after chunk.
    factory.make_many_tiny_checkpoints(run.directory, 1900, family="more.ckpt", hardlink=True)
    total = len(indexes_on_disk(run))

    with LiveWorker(log_path=tmp_path / "worker.log", SCAN_CHUNK_DELAY_SECONDS="1"):
        scan = jobs.start(Job.SCAN, run=run)
        wait_for(lambda: Job.objects.get(pk=scan.pk).status == Job.RUNNING, 120, what="the scan to start")
        time.sleep(2.5)  # a few chunks into an eight-chunk scan
        started = time.monotonic()
        pruning.pin(target, "the one we ship", actor=None)
        took = time.monotonic() - started
        recorded = run.checkpoints.count()
        scan.refresh_from_db()
        assert scan.status == Job.RUNNING and recorded < total, (
            f"the pin took {took:.1f} s and returned after the scan had stored everything ({recorded}/{total})"
        )
        recipes.wait_for_job(scan, Job.ENDED, timeout=120)

    assert scan.status == Job.FINISHED, scan.error
    assert run.checkpoints.on_disk().count() == total
    target.refresh_from_db()
    assert target.pinned and target.pin_reason == "the one we ship"


def test_scans_overlapping_a_prune_leave_its_rows_pruned(root, tmp_path, settings):
    run = new_run(root, max_to_keep=3, min_age_seconds=0)
    many = factory.make_many_tiny_checkpoints(run.directory, 600, hardlink=True)
    scanning.scan(run)
    plan = retention.plan_retention(run)
    doomed = sorted(plan.deleted_prefixes)
    assert len(doomed) == 600 - 3

    settings.SCAN_CHUNK_DELAY_SECONDS = 0.3
    scans = 0
    with LiveWorker(log_path=tmp_path / "worker.log", PRUNE_PROGRESS_DELAY_SECONDS="0.04"):
        prune = jobs.start(Job.PRUNE, run=run, params={"fingerprint": plan.fingerprint})
        wait_for(lambda: Job.objects.get(pk=prune.pk).progress >= 5, 120, what="the prune to be deleting")
        # What the periodic rescan does on a second worker: scan again and again while files go.
        while not Job.objects.get(pk=prune.pk).is_ended:
            scanning.scan(Run.objects.get(pk=run.pk))
            scans += 1
        scanning.scan(Run.objects.get(pk=run.pk), full=True)
    prune.refresh_from_db()

    assert prune.status == Job.FINISHED, prune.error
    assert scans >= 2
    statuses = dict(run.checkpoints.filter(prefix__in=doomed).values("status").annotate(n=Count("id"))
                    .values_list("status", "n"))
    assert statuses == {Checkpoint.PRUNED: len(doomed)}
    kept = set(run.checkpoints.on_disk().values_list("prefix", flat=True))
    assert kept == set(many.prefixes[-3:]) == indexes_on_disk(run)


def test_a_scan_outlasting_a_save_leaves_the_saves_latest_flagged(root, tmp_path, settings):
    run = new_run(root)
    factory.make_many_tiny_checkpoints(run.directory, 1500, family="older.ckpt", hardlink=True)
    settings.SCAN_CHUNK_DELAY_SECONDS = 1.0
    worker = recipes.start_worker(root, tmp_path / "worker.log", SLOW_RECIPE_STEP_DELAY="0.02")
    try:
        save = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.SLOW, steps=60, save_every=10))
        wait_for(lambda: run.checkpoints.exists(), 120, what="the save's first checkpoint")
        # Lists the directory (and its state file) now, then stores for seconds: the save ends meanwhile.
        scanning.scan(Run.objects.get(pk=run.pk))
        scanned = timezone.now()
        recipes.wait_for_job(save, Job.ENDED, timeout=120)
    finally:
        worker.stop()
    assert save.status == Job.FINISHED, save.error
    assert save.ended_at < scanned, "the save did not end during the scan"

    run.refresh_from_db()
    newest = save.result["saved"][-1]["prefix"]
    assert run.latest_prefix == newest
    assert list(run.checkpoints.exclude(latest_in=[]).values_list("prefix", "latest_in")) == [(newest, ["checkpoint"])]


def test_status_transitions_never_turn_pruned_into_missing(root):
    run = new_run(root)
    factory.make_many_tiny_checkpoints(run.directory, 3, hardlink=True)
    scanning.scan(run)
    run.checkpoints.filter(prefix="model.ckpt-1").update(status=Checkpoint.PRUNED)
    assert set(run.checkpoints.may_become(Checkpoint.MISSING).values_list("prefix", flat=True)) == {
        "model.ckpt-2", "model.ckpt-3"}
    assert not Checkpoint.may_move(Checkpoint.PRUNED, Checkpoint.MISSING)
    assert Checkpoint.may_move(Checkpoint.PRUNED, Checkpoint.PRESENT)  # its files were found again
    assert Checkpoint.may_move(Checkpoint.MISSING, Checkpoint.PRUNED)  # a prune finishing its plan
    for name in os.listdir(run.directory):
        if name.startswith(("model.ckpt-1.", "model.ckpt-2.")) and not name.endswith(".meta"):
            os.unlink(os.path.join(run.directory, name))
    scanning.scan(run, full=True)
    assert dict(run.checkpoints.values_list("prefix", "status")) == {
        "model.ckpt-1": Checkpoint.PRUNED, "model.ckpt-2": Checkpoint.MISSING, "model.ckpt-3": Checkpoint.PRESENT}
