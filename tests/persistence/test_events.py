"""Event files: scalar curves read incrementally from files real TensorFlow writers wrote,
compared with what ``tf.compat.v1.train.summary_iterator`` reads; downsampling; attaching by step."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from persistence import events
from persistence.files import UnsafeFile
from tests.event_files import (
    expected_scalars,
    keras_fit_with_checkpoints,
    record_offsets,
    write_tf1_events,
    write_tf2_events,
)

pytestmark = pytest.mark.tf

LOSS = [(step, 1.0 / (step + 1)) for step in range(0, 50)]
ACCURACY = [(step, 0.5 + step / 200) for step in range(0, 50, 5)]


def read_all(directory, state=None, roots=None) -> dict[str, list[tuple[int, float]]]:
    """Every file found, read from ``state`` (or the start): points by tag."""
    out: dict[str, list[tuple[int, float]]] = {}
    for ref in events.find_event_files(str(directory)):
        read = events.read_event_file(str(directory), ref, state or events.EventFileState(),
                                      roots=roots or [directory])
        for tag, (steps, values) in read.points.items():
            out.setdefault(tag, []).extend(zip(steps, values, strict=True))
    return out


def test_tf1_file_writer_simple_values_equal_what_summary_iterator_reads(tmp_path):
    path = write_tf1_events(tmp_path, {"loss": LOSS, "accuracy": ACCURACY})
    got = read_all(tmp_path)
    assert got == expected_scalars(path)
    assert got["loss"][:2] == [(0, 1.0), (1, 0.5)]
    assert len(got["accuracy"]) == len(ACCURACY)


def test_tf2_scalar_tensors_equal_what_summary_iterator_reads_and_histograms_are_skipped(tmp_path):
    path = write_tf2_events(tmp_path, {"loss": LOSS, "accuracy": ACCURACY}, histogram=True)
    got = read_all(tmp_path)
    assert got == expected_scalars(path)
    assert set(got) == {"loss", "accuracy"}  # loss_hist / accuracy_hist are histograms
    assert [s for s, _ in got["loss"]] == [s for s, _ in LOSS]


def test_keras_tensorboard_callback_tags_are_prefixed_by_their_subdirectory(tmp_path):
    keras_fit_with_checkpoints(tmp_path, epochs=3)
    got = read_all(tmp_path)
    expected = {}
    for sub in ("train", "validation"):
        for name in os.listdir(tmp_path / sub):
            if name.startswith("events.out.tfevents."):
                expected.update(expected_scalars(tmp_path / sub / name, prefix=f"{sub}/"))
    assert got == expected
    assert [s for s, _ in got["validation/epoch_loss"]] == [0, 1, 2]
    assert "train/epoch_loss" in got and "validation/epoch_accuracy" in got


def test_half_written_last_record_is_left_for_later_and_read_once_complete(tmp_path):
    source = tmp_path / "source"
    path = write_tf2_events(source, {"loss": LOSS})
    data = open(path, "rb").read()
    offsets = record_offsets(path)
    run = tmp_path / "run"
    run.mkdir()
    copy = run / os.path.basename(path)
    # Inside the last record's length header, inside its data, inside its checksum.
    for cut in (offsets[-2] + 7, offsets[-2] + 20, len(data) - 1):
        copy.write_bytes(data[:cut])
        ref = events.find_event_files(str(run))[0]
        first = events.read_event_file(str(run), ref, events.EventFileState(), roots=[tmp_path])
        assert first.pending and not first.state.problems and not first.state.stuck
        assert first.state.offset == offsets[-2]
        assert list(first.points["loss"][0]) == [s for s, _ in LOSS[:-1]]

        copy.write_bytes(data)  # the writer finishes the record
        ref = events.find_event_files(str(run))[0]
        second = events.read_event_file(str(run), ref, first.state, roots=[tmp_path])
        assert not second.pending and second.state.offset == len(data)
        # Only the last point is new; the plugin was named in the first event, read before.
        steps, values = second.points["loss"]
        assert list(steps) == [LOSS[-1][0]] and list(values) == [pytest.approx(LOSS[-1][1])]
        assert second.records == 1


def test_rereading_a_fully_read_file_reads_nothing(tmp_path):
    write_tf1_events(tmp_path, {"loss": LOSS})
    ref = events.find_event_files(str(tmp_path))[0]
    first = events.read_event_file(str(tmp_path), ref, events.EventFileState(), roots=[tmp_path])
    again = events.read_event_file(str(tmp_path), ref, first.state, roots=[tmp_path])
    assert again.points == {} and again.records == 0 and again.state.offset == first.state.offset == ref.size


def test_corrupt_record_is_reported_and_the_records_after_it_are_read(tmp_path):
    path = write_tf1_events(tmp_path, {"loss": LOSS})
    offsets = record_offsets(path)
    # Record 0 is the file_version event; record 11 holds step 10. Flip a byte of its data.
    with open(path, "r+b") as handle:
        handle.seek(offsets[11] + 12 + 3)
        byte = handle.read(1)
        handle.seek(offsets[11] + 12 + 3)
        handle.write(bytes([byte[0] ^ 0xFF]))
    ref = events.find_event_files(str(tmp_path))[0]
    read = events.read_event_file(str(tmp_path), ref, events.EventFileState(), roots=[tmp_path])
    steps = list(read.points["loss"][0])
    assert 10 not in steps and steps == [s for s, _ in LOSS if s != 10]
    assert read.state.offset == ref.size and not read.state.stuck
    assert read.state.problems == [
        f"event file {ref.path}: the record at byte {offsets[11]} is corrupt (checksum mismatch); read on after it"
    ]


def test_corrupt_length_header_stops_the_file_with_a_problem(tmp_path):
    path = write_tf1_events(tmp_path, {"loss": LOSS})
    offsets = record_offsets(path)
    with open(path, "r+b") as handle:
        handle.seek(offsets[20] + 2)
        handle.write(b"\xff\xff")
    ref = events.find_event_files(str(tmp_path))[0]
    read = events.read_event_file(str(tmp_path), ref, events.EventFileState(), roots=[tmp_path])
    assert list(read.points["loss"][0]) == list(range(0, 19))
    assert read.state.stuck and read.state.offset == offsets[20]
    assert "corrupt length header" in read.state.problems[0]


def test_a_rewritten_shorter_file_is_read_again_from_the_start(tmp_path):
    path = write_tf1_events(tmp_path, {"loss": LOSS})
    ref = events.find_event_files(str(tmp_path))[0]
    first = events.read_event_file(str(tmp_path), ref, events.EventFileState(), roots=[tmp_path])
    os.remove(path)
    write_tf1_events(tmp_path, {"loss": LOSS[:5]})
    ref = events.find_event_files(str(tmp_path))[0]
    again = events.read_event_file(str(tmp_path), ref, first.state, roots=[tmp_path])
    assert again.restarted and list(again.points["loss"][0]) == [0, 1, 2, 3, 4]


def test_event_file_linked_from_outside_the_roots_is_refused(tmp_path):
    outside = tmp_path / "outside"
    path = write_tf1_events(outside, {"loss": LOSS})
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(path, run / os.path.basename(path))
    ref = events.find_event_files(str(run))[0]
    with pytest.raises(UnsafeFile):
        events.read_event_file(str(run), ref, events.EventFileState(), roots=[run])


def test_find_event_files_walks_subdirectories_without_following_links(tmp_path):
    write_tf1_events(tmp_path, {"loss": LOSS[:2]})
    write_tf1_events(tmp_path / "eval", {"accuracy": ACCURACY[:2]})
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    write_tf1_events(elsewhere, {"x": LOSS[:2]})
    os.symlink(elsewhere, tmp_path / "linked")
    (tmp_path / "model.ckpt-1.index").write_bytes(b"")
    refs = events.find_event_files(str(tmp_path))
    assert [r.tag_prefix for r in refs] == ["", "eval/"]
    shutil.rmtree(elsewhere)


def test_merge_sorts_by_step_and_keeps_the_value_written_last():
    first = (np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    restarted = (np.array([2, 3, 4]), np.array([20.0, 30.0, 40.0]))
    steps, values = events.merge([first, restarted])
    assert steps.tolist() == [1, 2, 3, 4] and values.tolist() == [1.0, 20.0, 30.0, 40.0]


def test_downsample_keeps_at_most_the_limit_and_every_spike():
    steps = np.arange(1_000_000, dtype=np.int64)
    values = np.sin(steps / 5000.0)
    values[123_457] = 50.0
    values[876_543] = -50.0
    values[10] = np.nan
    s, v = events.downsample(steps, values, 2000)
    assert len(s) <= 2000 and s[0] == 0 and s[-1] == 999_999
    assert np.all(np.diff(s) > 0)
    assert 123_457 in s and 876_543 in s
    assert np.nanmax(v) == 50.0 and np.nanmin(v) == -50.0
    small = events.downsample(steps[:100], values[:100], 2000)
    assert len(small[0]) == 100


def test_attach_takes_the_value_at_the_step_else_the_nearest_earlier_one_in_the_save_interval():
    curves = {
        "loss": (np.array([0, 5, 10, 15, 20, 29]), np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])),
        "eval/accuracy": (np.array([10, 30]), np.array([0.6, 0.9])),
    }
    got = events.attach(curves, [10, 20, 30, 40], previous=None)
    assert got[10] == {"loss": (0.8, 10), "eval/accuracy": (0.6, 10)}
    assert got[20] == {"loss": (0.6, 20)}  # accuracy at 10 belongs to the checkpoint at 10
    assert got[30] == {"loss": (0.5, 29), "eval/accuracy": (0.9, 30)}
    assert got[40] == {}  # nothing logged after step 30
    # The first checkpoint's interval is the gap to the second one.
    assert events.attach({"loss": (np.array([3]), np.array([1.0]))}, [10, 12], previous=None)[10] == {}
    assert events.attach({"loss": (np.array([3]), np.array([1.0]))}, [10], previous=None)[10] == {"loss": (1.0, 3)}
    # A later part of the run: the interval starts after the checkpoint just below it.
    assert events.attach(curves, [20], previous=15)[20] == {"loss": (0.6, 20)}
    assert events.attach({"loss": (np.array([15]), np.array([1.0]))}, [20], previous=15)[20] == {}
