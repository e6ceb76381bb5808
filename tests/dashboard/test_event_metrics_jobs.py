"""Event files read by scan jobs in a real worker process, while a trainer is still writing."""

from __future__ import annotations

import os

import pytest

from dashboard import jobs
from dashboard.models import Job, MetricSeries, Run
from tests import checkpoint_factory as factory
from tests.event_files import record_offsets, write_tf2_events
from tests.live import run_jobs_to_completion

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


def scan_through_the_worker(run: Run) -> dict:
    job = jobs.start(Job.SCAN, run=run)
    run_jobs_to_completion()
    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    return job.result


def test_a_record_still_being_written_is_read_by_the_scan_after_it_is_complete(checkpoint_root, tmp_path):
    directory = checkpoint_root / "live"
    factory.make_seed_run(directory, steps=(10, 20), max_to_keep=None)
    finished = write_tf2_events(tmp_path / "trainer", {"loss": [(step, 1.0 / step) for step in range(1, 21)]})
    data = open(finished, "rb").read()
    cut = record_offsets(finished)[-2] + 20  # the last event (step 20) half written
    target = directory / "eval" / os.path.basename(finished)
    target.parent.mkdir()
    target.write_bytes(data[:cut])
    run = Run.objects.create(name="live", directory=str(directory))

    first = scan_through_the_worker(run)
    assert first["metric_points"] == 19 and first["problems"] == []
    ckpt_20 = run.checkpoints.get(prefix="model.ckpt-20")
    assert ckpt_20.metric_steps == {"eval/loss": 19}  # the nearest earlier step, for now

    with open(target, "ab") as handle:  # the trainer finishes the record
        handle.write(data[cut:])
    second = scan_through_the_worker(run)
    assert second["metric_points"] == 1 and second["problems"] == []
    assert MetricSeries.objects.get(run=run, tag="eval/loss").count == 20
    ckpt_20.refresh_from_db()
    assert ckpt_20.metric_steps == {"eval/loss": 20} and ckpt_20.metrics["eval/loss"] == pytest.approx(0.05)
