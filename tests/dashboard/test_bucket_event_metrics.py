"""Metrics from event files of runs in a bucket: the same values on the same checkpoints as the local
copy, read from where the last read stopped, and nothing fetched for files that did not change.

Real event files (TensorFlow's writers, ``tests/event_files.py``) and real checkpoints are uploaded
to the loopback S3 server (and GCS-compatible server); requests are counted on the client.
"""

from __future__ import annotations

import os
import shutil

import pytest

from dashboard import scanning
from dashboard.models import EventFile, MetricSeries, Run
from persistence import storage
from tests import checkpoint_factory as factory
from tests.event_files import expected_scalars, record_offsets, write_tf1_events, write_tf2_events

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

STEPS = (10, 20, 30, 40, 50, 60)
LOSS = [(step, 10.0 / step) for step in range(1, 61)]
ACCURACY = [(10, 0.5), (20, 0.9), (30, 0.6), (35, 0.95), (50, 0.7), (60, 0.8)]


@pytest.fixture(scope="module")
def seed_with_events(tmp_path_factory):
    """Checkpoints every 10 steps, a loss logged every step beside them (TF1 writer) and an
    Estimator-style ``eval/`` directory (TF2 writer)."""
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=STEPS, max_to_keep=None)
    loss_file = write_tf1_events(directory, {"loss": LOSS})
    eval_file = write_tf2_events(directory / "eval", {"accuracy": ACCURACY})
    return directory, loss_file, eval_file


def _upload_tree(bucket, local, prefix: str) -> None:
    bucket.upload_directory(local, prefix)
    for name in sorted(os.listdir(local)):
        if os.path.isdir(os.path.join(local, name)):
            bucket.upload_directory(os.path.join(local, name), f"{prefix}/{name}")


def _metrics(run: Run) -> dict:
    return {c.prefix: (c.metrics, c.metric_steps) for c in run.checkpoints.all()}


def _track_both(bucket, settings, checkpoint_root, seed) -> tuple[Run, Run]:
    settings.CHECKPOINT_OBJECT_ROOTS = [bucket.url("runs")]
    _upload_tree(bucket, seed, "runs/seed")
    shutil.copytree(seed, checkpoint_root / "seed")
    remote = Run.objects.create(name="remote", directory=bucket.url("runs/seed"))
    local = Run.objects.create(name="local", directory=str(checkpoint_root / "seed"))
    return remote, local


@pytest.mark.parametrize("which", ["s3", "gs"])
def test_bucket_run_gets_the_metrics_of_its_local_copy(request, which, settings, checkpoint_root, seed_with_events):
    bucket = request.getfixturevalue("s3_bucket" if which == "s3" else "gcs_bucket")
    seed, loss_file, eval_file = seed_with_events
    remote, local = _track_both(bucket, settings, checkpoint_root, seed)
    remote_report = scanning.scan(remote)
    local_report = scanning.scan(local)
    assert remote_report["metric_points"] == local_report["metric_points"] == len(LOSS) + len(ACCURACY)
    assert remote_report["problems"] == local_report["problems"] == []
    assert _metrics(remote) == _metrics(local)
    ckpt40 = remote.checkpoints.get(prefix="model.ckpt-40")
    assert ckpt40.metrics["loss"] == dict(expected_scalars(loss_file)["loss"])[40]
    assert ckpt40.metrics["eval/accuracy"] == dict(expected_scalars(eval_file)["accuracy"])[35]
    assert ckpt40.metric_steps == {"loss": 40, "eval/accuracy": 35}
    assert sorted(MetricSeries.objects.filter(run=remote).values_list("tag", "count")) == [
        ("eval/accuracy", len(ACCURACY)), ("loss", len(LOSS))]

    # Nothing changed: the run's listing and the eval/ folder's, no GET of any object.
    list_op = "ListObjectsV2" if which == "s3" else "ListObjects"
    with storage.count_requests() as again:
        report = scanning.scan(remote)
    assert report["unchanged_directory"] and report["metric_points"] == 0
    assert again == {list_op: 2}


def test_a_grown_event_object_is_read_from_the_last_offset_only(s3_bucket, settings, checkpoint_root, tmp_path):
    run_dir = tmp_path / "run"
    factory.make_seed_run(run_dir, steps=STEPS, max_to_keep=None)
    whole = write_tf1_events(tmp_path / "logs", {"loss": LOSS})
    name = os.path.basename(whole)
    data = open(whole, "rb").read()
    offsets = record_offsets(whole)
    # Half the records, then a record cut short: what an object flushed mid-write holds.
    half = offsets[len(offsets) // 2]
    cut = half + (offsets[len(offsets) // 2 + 1] - half) // 2
    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    s3_bucket.upload_directory(run_dir, "runs/seed")
    s3_bucket.put(f"runs/seed/{name}", data[:cut])
    run = Run.objects.create(name="remote", directory=s3_bucket.url("runs/seed"))

    first = scanning.scan(run)
    row = EventFile.objects.get(run=run, path=name)
    assert row.offset == half and row.size == cut and row.etag
    loss = dict(expected_scalars(whole)["loss"])
    first_points = first["metric_points"]
    assert 0 < first_points < len(LOSS)

    # The half record is not read again while the object is the same (same ETag).
    with storage.count_requests() as idle:
        assert scanning.scan(run)["metric_points"] == 0
    assert idle == {"ListObjectsV2": 1}

    # The trainer flushed the rest: the object is replaced by a longer one.
    s3_bucket.put(f"runs/seed/{name}", data)
    with storage.count_requests() as grown:
        second = scanning.scan(run)
    assert second["metric_points"] == len(LOSS) - first_points
    # The listing changed, so the two state files are read again; the event file costs one ranged GET.
    assert grown == {"ListObjectsV2": 1, "GetObject": 2 + 1}
    row.refresh_from_db()
    assert row.offset == row.size == len(data)
    series = MetricSeries.objects.get(run=run, tag="loss")
    assert series.count == len(LOSS)  # no point stored twice
    assert {c.prefix: c.metrics["loss"] for c in run.checkpoints.all() if c.prefix.startswith("model")} == {
        f"model.ckpt-{step}": loss[step] for step in STEPS}

    # Rewritten shorter (a trainer restarted): read again from the start.
    s3_bucket.put(f"runs/seed/{name}", data[:half])
    third = scanning.scan(run)
    row.refresh_from_db()
    assert row.offset == half and third["metric_points"] == first_points
