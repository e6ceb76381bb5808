"""Metrics from event files through scans: attached to checkpoints by step, stored once, read
incrementally, used by retention, compare and the pages."""

from __future__ import annotations

import io
import json
import os

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard import comparing, event_metrics, recording, retention, scanning
from dashboard.models import Checkpoint, EventFile, MetricChunk, MetricSeries, Run
from tests import checkpoint_factory as factory
from tests.dashboard.test_pages import RUN_PAGE_QUERIES
from tests.event_files import (
    expected_scalars,
    keras_fit_with_checkpoints,
    newest_event_file,
    record_offsets,
    write_tf1_events,
    write_tf2_events,
)

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

STEPS = (10, 20, 30, 40, 50, 60)
LOSS = [(step, 10.0 / step) for step in range(1, 61)]
# Evaluation skipped step 40 and ran at 35: checkpoint 40 takes that value, "from step 35".
ACCURACY = [(10, 0.5), (20, 0.9), (30, 0.6), (35, 0.95), (50, 0.7), (60, 0.8)]


def scan_json(directory, *args: str) -> dict:
    out = io.StringIO()
    call_command("scan", str(directory), *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def model_rows(report: dict) -> dict[int, dict]:
    return {c["step"]: c for c in report["checkpoints"] if c["prefix"].startswith("model.ckpt-")}


@pytest.fixture
def seed_with_events(checkpoint_root):
    """A TF1 Saver run (checkpoints every 10 steps) with a training loss logged every step by a
    ``FileWriter`` beside the checkpoints and an Estimator-style ``eval/`` directory (TF2 writer)."""
    directory = checkpoint_root / "seed"
    factory.make_seed_run(directory, steps=STEPS, max_to_keep=None)
    loss_file = write_tf1_events(directory, {"loss": LOSS})
    eval_file = write_tf2_events(directory / "eval", {"accuracy": ACCURACY})
    return directory, loss_file, eval_file


def test_scan_json_lists_event_metrics_of_every_trainer_under_their_tags(checkpoint_root):
    directory = checkpoint_root / "keras"
    keras_fit_with_checkpoints(directory, epochs=3)
    loss_file = write_tf1_events(directory, {"loss": [(0, 0.9), (1, 0.7), (2, 0.4)]})
    eval_file = write_tf2_events(directory / "eval", {"accuracy": [(0, 0.6), (1, 0.7), (2, 0.8)]})
    report = scan_json(directory)

    expected = {**expected_scalars(loss_file), **expected_scalars(eval_file, prefix="eval/")}
    for sub in ("train", "validation"):
        expected.update(expected_scalars(newest_event_file(directory / sub), prefix=f"{sub}/"))
    rows = {c["step"]: c for c in report["checkpoints"]}
    assert sorted(rows) == [0, 1, 2]
    for step, row in rows.items():
        for tag in ("loss", "eval/accuracy", "validation/epoch_loss", "train/epoch_loss"):
            assert row["metrics"][tag] == dict(expected[tag])[step], (step, tag)
            assert row["metric_steps"][tag] == step
    assert report["problems"] == []


def test_values_attach_at_the_step_else_from_the_nearest_earlier_step_in_the_save_interval(seed_with_events):
    directory, loss_file, eval_file = seed_with_events
    rows = model_rows(scan_json(directory))
    loss, accuracy = dict(expected_scalars(loss_file)["loss"]), dict(expected_scalars(eval_file)["accuracy"])
    for step in STEPS:
        assert rows[step]["metrics"]["loss"] == loss[step]
    assert rows[20]["metrics"]["eval/accuracy"] == accuracy[20] and rows[20]["metric_steps"]["eval/accuracy"] == 20
    assert rows[40]["metrics"]["eval/accuracy"] == accuracy[35] and rows[40]["metric_steps"]["eval/accuracy"] == 35
    # The TF1 run's subset checkpoints (same steps, another state file) get the same values.
    subset = {c["step"]: c for c in scan_json(directory)["checkpoints"] if c["prefix"].startswith("subset")}
    assert subset[40]["metrics"]["eval/accuracy"] == accuracy[35]


def test_rescans_read_only_new_bytes_and_store_each_point_once(checkpoint_root):
    from tests.checkpoint_factory import _tf

    tf = _tf()
    directory = checkpoint_root / "live"
    factory.make_seed_run(directory, steps=(5, 10), max_to_keep=None)
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for step in range(1, 8):
            tf.summary.scalar("loss", 1.0 / step, step=step)
    writer.flush()
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    assert run.metric_series.get(tag="loss").count == 7

    assert scanning.scan(run)["metric_points"] == 0  # nothing appended, nothing read
    with writer.as_default():
        for step in range(8, 12):
            tf.summary.scalar("loss", 1.0 / step, step=step)
    writer.flush()
    assert scanning.scan(run)["metric_points"] == 4  # appended to the same file, after the metadata event
    writer.close()

    series = run.metric_series.get(tag="loss")
    assert series.count == 11 and (series.first_step, series.last_step) == (1, 11)
    assert sum(MetricChunk.objects.filter(series=series).values_list("count", flat=True)) == 11
    event_file = EventFile.objects.get(run=run)
    assert event_file.offset == os.path.getsize(directory / event_file.path)
    rows = {c.step: c for c in run.checkpoints.filter(prefix__startswith="model")}
    assert rows[10].metrics["loss"] == pytest.approx(0.1) and rows[10].metric_steps == {"loss": 10}


def test_chunks_fill_up_and_curves_read_back_whole(checkpoint_root, monkeypatch):
    monkeypatch.setattr(event_metrics, "CHUNK_POINTS", 4)
    directory = checkpoint_root / "chunks"
    factory.make_seed_run(directory, steps=(10,), max_to_keep=None)
    write_tf1_events(directory, {"loss": LOSS[:6]})
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    write_tf1_events(directory / "more", {"loss": LOSS[:3]})  # another tag: more/loss
    write_tf1_events(directory, {"loss": LOSS[6:11]})  # a second file of the same tag
    scanning.scan(run)
    chunks = list(MetricChunk.objects.filter(series__tag="loss").order_by("seq").values_list("count", flat=True))
    assert chunks == [4, 4, 3]
    steps, values = event_metrics.curves(run)["loss"]
    assert steps.tolist() == list(range(1, 12))
    assert values.tolist() == [pytest.approx(dict(LOSS)[s]) for s in range(1, 12)]
    assert event_metrics.curves(run)["more/loss"][0].tolist() == [1, 2, 3]


def test_best_n_by_an_event_file_metric_keeps_the_right_checkpoints(seed_with_events):
    directory, *_ = seed_with_events
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    # Best 4: the seed run saves each step twice (model.ckpt- and its subset.ckpt-), with the same metrics.
    Run.objects.filter(pk=run.pk).update(keep_best_n=4, best_metric="eval/accuracy", best_mode="max",
                                         min_age_seconds=0, max_to_keep=1, keep_checkpoint_every_n_hours=None,
                                         keep_every_n_steps=None)
    run.refresh_from_db()
    plan = retention.plan_retention(run)
    kept = {d.step for d in plan.decisions if d.keep and d.prefix.startswith("model.ckpt-")}
    assert kept == {20, 40, 60}  # 0.9, 0.95 (from step 35), and 60 is the latest
    reasons = {d.step: d.reasons for d in plan.decisions if d.prefix.startswith("model.ckpt-")}
    assert any("best" in r for r in reasons[40])

    out = io.StringIO()
    call_command("prune", run.name, "--json", stdout=out)
    for step in STEPS:
        assert (directory / f"model.ckpt-{step}.index").exists() == (step in {20, 40, 60})
    pruned = run.checkpoints.get(prefix="model.ckpt-30")
    assert pruned.status == Checkpoint.PRUNED and pruned.metrics["eval/accuracy"] == pytest.approx(0.6)  # kept
    scanning.scan(run)
    pruned.refresh_from_db()
    assert pruned.metrics["eval/accuracy"] == pytest.approx(0.6) and pruned.metric_steps["eval/accuracy"] == 30


def test_metrics_our_save_jobs_recorded_are_kept_beside_event_metrics(checkpoint_root):
    directory = checkpoint_root / "mixed"
    factory.make_seed_run(directory, steps=STEPS, max_to_keep=None)
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    recording.record_metrics(run, {"model.ckpt-20": {"loss": 123.0, "accuracy": 0.5}})
    write_tf1_events(directory, {"loss": LOSS})
    write_tf2_events(directory / "eval", {"accuracy": ACCURACY})
    scanning.scan(run)
    row = run.checkpoints.get(prefix="model.ckpt-20")
    assert row.metrics == {"loss": 123.0, "accuracy": 0.5, "eval/accuracy": pytest.approx(0.9)}
    assert row.metric_steps == {"eval/accuracy": 20}
    other = run.checkpoints.get(prefix="model.ckpt-30")
    assert other.metrics["loss"] == pytest.approx(10.0 / 30)


def test_compare_shows_event_metrics_side_by_side(seed_with_events):
    directory, *_ = seed_with_events
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    a, b = run.checkpoints.get(prefix="model.ckpt-20"), run.checkpoints.get(prefix="model.ckpt-40")
    comparison = comparing.compute(a, b)
    assert comparison.metrics["eval/accuracy"]["a"] == pytest.approx(0.9)
    assert comparison.metrics["eval/accuracy"]["b"] == pytest.approx(0.95)


def test_run_page_says_from_which_step_and_keeps_its_query_budget(client, viewer, seed_with_events,
                                                                   django_assert_num_queries):
    directory, *_ = seed_with_events
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    client.force_login(viewer)
    with django_assert_num_queries(RUN_PAGE_QUERIES):
        html = client.get(reverse("run", args=[run.name])).content.decode()
    assert "eval/accuracy" in html and "from step 35" in html
    detail = client.get(reverse("checkpoint", args=[run.name, run.checkpoints.get(prefix="model.ckpt-40").pk]))
    assert "from step 35" in detail.content.decode()
    detail = client.get(reverse("checkpoint", args=[run.name, run.checkpoints.get(prefix="model.ckpt-20").pk]))
    assert "eval/accuracy · at step" in detail.content.decode()


def test_chart_has_full_curves_cut_to_2000_points_and_marks_pruned_checkpoints(client, viewer, checkpoint_root):
    directory = checkpoint_root / "long"
    factory.make_seed_run(directory, steps=(1000, 2000, 3000), max_to_keep=None)
    write_tf1_events(directory, {"loss": [(step, 1.0 / step) for step in range(1, 3001)]})
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    run.checkpoints.filter(step=2000).update(status=Checkpoint.PRUNED)  # model.ckpt- and subset.ckpt-
    client.force_login(viewer)
    with CaptureQueriesContext(connection) as long_run:
        data = client.get(reverse("run-chart", args=[run.name])).json()
    short = checkpoint_root / "short"
    factory.make_seed_run(short, steps=(1, 2), max_to_keep=None)
    write_tf1_events(short, {"loss": [(1, 1.0), (2, 0.5)]})
    short_url = reverse("run-chart", args=[scan_json(short)["run"]["name"]])
    with CaptureQueriesContext(connection) as short_run:
        assert client.get(short_url).json()["curves"]
    assert len(long_run) == len(short_run)  # one query for every curve, whatever its length
    curve = data["curves"]["loss"]
    assert curve["total"] == 3000 and 1000 <= len(curve["steps"]) <= 2000
    assert curve["steps"][0] == 1 and curve["steps"][-1] == 3000
    assert max(v for v in curve["values"]) == 1.0  # the first, highest point survives
    marks = dict(zip(data["steps"], data["metrics"]["loss"], strict=True))
    gone = dict(zip(data["steps"], data["gone"], strict=True))
    assert marks[2000] == pytest.approx(1 / 2000) and gone[2000] is True and gone[1000] is False


def test_corrupt_record_is_a_problem_on_the_run_page_and_later_points_are_read(client, viewer, checkpoint_root):
    directory = checkpoint_root / "damaged"
    factory.make_seed_run(directory, steps=(10, 20), max_to_keep=None)
    path = write_tf1_events(directory, {"loss": LOSS[:20]})
    offsets = record_offsets(path)
    with open(path, "r+b") as handle:
        handle.seek(offsets[5] + 14)
        byte = handle.read(1)
        handle.seek(offsets[5] + 14)
        handle.write(bytes([byte[0] ^ 0x55]))
    report = scan_json(directory)
    name = os.path.basename(path)
    assert report["problems"] == [
        f"event file {name}: the record at byte {offsets[5]} is corrupt (checksum mismatch); read on after it"
    ]
    run = Run.objects.get(pk=report["run"]["id"])
    assert run.metric_series.get(tag="loss").count == 19
    assert model_rows(report)[20]["metrics"]["loss"] == pytest.approx(0.5)
    client.force_login(viewer)
    assert "is corrupt (checksum mismatch)" in client.get(reverse("run", args=[run.name])).content.decode()
    scanning.scan(run)  # reported once, not once per scan
    run.refresh_from_db()
    assert sum("checksum mismatch" in p for p in run.scan_problems) == 1


def test_a_store_loses_to_another_scan_that_stored_the_same_bytes_first(checkpoint_root, monkeypatch):
    directory = checkpoint_root / "race"
    factory.make_seed_run(directory, steps=(10,), max_to_keep=None)
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    write_tf1_events(directory, {"loss": LOSS[:10]})
    real_read = event_metrics.events.read_event_file

    def read_then_let_another_scan_store(*args, **kwargs):
        read = real_read(*args, **kwargs)
        monkeypatch.setattr(event_metrics.events, "read_event_file", real_read)
        event_metrics.read_events(Run.objects.get(pk=run.pk))  # another scan, storing first
        return read

    monkeypatch.setattr(event_metrics.events, "read_event_file", read_then_let_another_scan_store)
    event_metrics.read_events(run)
    assert MetricSeries.objects.get(run=run, tag="loss").count == 10
    assert sum(MetricChunk.objects.filter(series__run=run).values_list("count", flat=True)) == 10
    assert run.checkpoints.get(prefix="model.ckpt-10").metrics["loss"] == pytest.approx(1.0)


def test_overlong_tags_are_reported_and_the_other_tags_stored(checkpoint_root):
    directory = checkpoint_root / "tags"
    factory.make_seed_run(directory, steps=(10,), max_to_keep=None)
    long_tag = "x" * (event_metrics.MAX_TAG_LENGTH + 1)
    write_tf1_events(directory, {"loss": LOSS[:10], long_tag: LOSS[:10]})
    report = scan_json(directory)
    assert [p for p in report["problems"] if "is not stored" in p] == [
        f"event file {os.path.basename(newest_event_file(directory))}: tag {long_tag[:80]!r} is not stored "
        f"(tags are kept up to {event_metrics.MAX_TAG_LENGTH} characters, {event_metrics.MAX_TAGS_PER_RUN} per run)"
    ]
    assert list(MetricSeries.objects.values_list("tag", flat=True)) == ["loss"]
    assert set(model_rows(report)[10]["metrics"]) == {"loss"}


def test_an_unchanged_run_directory_is_not_listed_but_its_event_subdirectories_are(checkpoint_root, monkeypatch):
    import time

    directory = checkpoint_root / "settled"
    factory.make_seed_run(directory, steps=(10, 20), max_to_keep=None)
    write_tf1_events(directory / "eval", {"accuracy": ACCURACY[:1]})
    past = time.time() - 60
    os.utime(directory, (past, past))  # settled: the scan records the directory's stamp
    run = Run.objects.get(pk=scan_json(directory)["run"]["id"])
    assert run.directory_stamp

    write_tf1_events(directory / "eval", {"accuracy": ACCURACY[1:2]})  # a new file inside eval/ only
    listed = []
    real_listdir = os.listdir

    def recording_listdir(path="."):
        listed.append(os.fspath(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", recording_listdir)
    result = scanning.scan(run)
    assert result["unchanged_directory"] and result["metric_points"] == 1
    assert str(directory) not in listed and str(directory / "eval") in listed
    assert run.checkpoints.get(prefix="model.ckpt-20").metrics["eval/accuracy"] == pytest.approx(0.9)
