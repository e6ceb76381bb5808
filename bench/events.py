"""Event-file benchmark: ``events_vs_bare``.

A run with 1,000,000 scalar points across 20 tags: 10 tags written the TF1 way (one event per step
holding all ten ``simple_value``s, 50,000 events, beside the checkpoints) and 10 the TF2 way (one
``tf.summary.scalar`` tensor event per value, 500,000 events, under ``validation/``), plus 500
checkpoint rows to attach values to. Ours is ``event_metrics.read_events`` from nothing: find the
files, read every record, store the curves (chunks + chart copies), attach values to the
checkpoints, in its transaction. The baseline is a bare loop over the same files with the same
reader (TensorFlow's ``tf_record_random_reader``) that parses each event and collects the same
scalars into per-tag lists. What it does not measure: a cold disk, or PostgreSQL (``DATABASE_URL``
decides, SQLite by default).

The files are written once per machine by TensorFlow's record writer (events built as protos: a
million ``tf.summary.scalar`` calls take minutes) and cached under the temp directory.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path

from bench.harness import entry, timed

TAGS_PER_KIND = 10
TF1_EVENTS = 50_000  # x 10 values
TF2_POINTS_PER_TAG = 50_000  # x 10 tags, one event each
CHECKPOINTS = 500
REPEAT = 3
CACHE = Path(tempfile.gettempdir()) / "ckpt-bench-events-v1"


def _write_files(target: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2, tensor_pb2, types_pb2
    from tensorflow.core.util import event_pb2

    tmp = target.with_name(target.name + ".partial")
    (tmp / "validation").mkdir(parents=True, exist_ok=True)
    start = 1.7e9
    with tf.io.TFRecordWriter(str(tmp / "events.out.tfevents.1700000000.bench.1.0")) as writer:
        writer.write(event_pb2.Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
        for step in range(TF1_EVENTS):
            summary = summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=f"train_metric_{i}", simple_value=1.0 / (step + i + 1))
                for i in range(TAGS_PER_KIND)
            ])
            writer.write(event_pb2.Event(wall_time=start + step, step=step, summary=summary).SerializeToString())
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    with tf.io.TFRecordWriter(str(tmp / "validation" / "events.out.tfevents.1700000000.bench.1.1.v2")) as writer:
        writer.write(event_pb2.Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
        for step in range(TF2_POINTS_PER_TAG):
            for i in range(TAGS_PER_KIND):
                tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                                tensor_content=struct.pack("<f", 2.0 / (step + i + 1)))
                value = summary_pb2.Summary.Value(tag=f"epoch_metric_{i}", tensor=tensor)
                if step == 0:
                    value.metadata.CopyFrom(metadata)  # as tf.summary writes it: the first event only
                event = event_pb2.Event(wall_time=start + step, step=step, summary=summary_pb2.Summary(value=[value]))
                writer.write(event.SerializeToString())
    tmp.rename(target)


def event_run_files() -> Path:
    if not CACHE.exists():
        _write_files(CACHE)
    return CACHE


def bare_loop(directory: Path) -> dict[str, tuple[list, list]]:
    """What a careful engineer writes to pull every scalar out of the files with the same reader."""
    from tensorflow.core.util import event_pb2
    from tensorflow.python.lib.io import tf_record

    out: dict[str, tuple[list, list]] = {}
    paths = sorted(p for p in directory.rglob("events.out.tfevents.*"))
    for path in paths:
        prefix = "" if path.parent == directory else f"{path.parent.name}/"
        reader = tf_record.tf_record_random_reader(str(path))
        offset, scalar_tags = 0, set()
        while True:
            try:
                record, offset = reader.read(offset)
            except IndexError:
                break
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor"):
                    if value.metadata.plugin_data.plugin_name == "scalars":
                        scalar_tags.add(value.tag)
                    if value.tag not in scalar_tags:
                        continue
                    number = struct.unpack("<f", value.tensor.tensor_content)[0]
                else:
                    continue
                steps, values = out.setdefault(prefix + value.tag, ([], []))
                steps.append(event.step)
                values.append(number)
        reader.close()
    return out


def run(work: Path) -> dict[str, dict]:
    from django.conf import settings

    from dashboard import event_metrics
    from dashboard.models import Checkpoint, EventFile, MetricSeries, Run

    source = event_run_files().resolve()
    # The cached files are read in place; the work directory stays the first root (later groups make
    # their runs there, not in this cache that outlives the run).
    settings.CHECKPOINT_ROOTS = [*settings.CHECKPOINT_ROOTS, source]
    run = Run.objects.create(name="events-1m", directory=str(source))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    stride = TF1_EVENTS // CHECKPOINTS
    Checkpoint.objects.bulk_create(
        Checkpoint(run=run, prefix=f"model.ckpt-{s}", step=s, saved_at=base + dt.timedelta(seconds=s), size_bytes=1)
        for s in range(stride, TF1_EVENTS + 1, stride)
    )

    def reset() -> None:
        EventFile.objects.filter(run=run).delete()
        MetricSeries.objects.filter(run=run).delete()
        run.checkpoints.update(metric_steps=None, metrics={})

    def ours() -> dict:
        return event_metrics.read_events(run)

    bare_loop(source)  # warm: TensorFlow imported, files in the page cache
    mine, bare = [], []
    for _ in range(REPEAT):
        reset()
        mine.append(timed(ours))
        bare.append(timed(lambda: bare_loop(source)))
    points = sum(MetricSeries.objects.filter(run=run).values_list("count", flat=True))
    expected = bare_loop(source)
    assert points == sum(len(s) for s, _ in expected.values()) == 1_000_000, points
    last = run.checkpoints.get(step=TF1_EVENTS)
    assert last.metrics["validation/epoch_metric_0"] == expected["validation/epoch_metric_0"][1][-1]
    assert len(last.metrics) == 2 * TAGS_PER_KIND
    started = time.perf_counter()
    rescan = event_metrics.read_events(run)
    rescan_seconds = time.perf_counter() - started
    assert rescan["metric_points"] == 0
    return {
        "events_vs_bare": entry(
            min(mine), min(bare), "s", "ratio <= 2.0", points=points, tags=2 * TAGS_PER_KIND,
            records=TF1_EVENTS + TAGS_PER_KIND * TF2_POINTS_PER_TAG, checkpoints=CHECKPOINTS, repeat=REPEAT,
            statistic="best of repeat, alternating", value_median=statistics.median(mine),
            baseline_median=statistics.median(bare), unchanged_rescan_seconds=rescan_seconds,
        ),
    }
