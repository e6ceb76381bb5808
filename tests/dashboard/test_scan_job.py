"""Scan jobs through the real queue and a real worker process."""

from __future__ import annotations

import pytest

from dashboard import jobs
from dashboard.models import Job, Run
from tests import checkpoint_factory as factory
from tests.live import run_jobs_to_completion

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


def test_scan_job_records_checkpoints_through_a_real_worker(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "seed", steps=(10, 20, 30))
    run = Run.objects.create(name="seed", directory=str(checkpoint_root / "seed"))
    job = jobs.start(Job.SCAN, run=run)

    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    assert job.progress == 100 and job.started_at and job.ended_at
    assert job.result["checkpoints"] == len(seed.prefixes) + len(seed.subset_prefixes)
    assert set(run.checkpoints.values_list("prefix", flat=True)) >= set(seed.prefixes)
    assert run.checkpoints.get(prefix=seed.latest).latest_in == ["checkpoint"]


def test_scan_job_for_a_vanished_directory_fails_with_a_reason(checkpoint_root):
    (checkpoint_root / "gone").mkdir()
    run = Run.objects.create(name="gone", directory=str(checkpoint_root / "gone"))
    (checkpoint_root / "gone").rmdir()
    job = jobs.start(Job.SCAN, run=run)

    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FAILED
    assert "does not exist" in job.error
