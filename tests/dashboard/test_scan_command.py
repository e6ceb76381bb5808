"""`manage.py scan --json` on real TensorFlow checkpoint directories."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil

import pytest
from django.core.management import CommandError, call_command

from dashboard import scanning
from dashboard.models import Checkpoint, Run
from tests import checkpoint_factory as factory

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


def scan_json(*args: str) -> dict:
    out = io.StringIO()
    call_command("scan", *args, "--json", stdout=out)
    return json.loads(out.getvalue())  # exactly one JSON object, nothing else on stdout


def by_prefix(report: dict) -> dict[str, dict]:
    return {c["prefix"]: c for c in report["checkpoints"]}


def test_seed_pattern_steps_meta_sources_and_both_state_files(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "seed")
    report = scan_json(str(checkpoint_root / "seed"), "--name", "seed")

    assert report["run"]["name"] == "seed"
    assert report["run"]["directory"] == str(checkpoint_root / "seed")
    rows = by_prefix(report)
    assert set(rows) == set(seed.prefixes) | set(seed.subset_prefixes)
    first, *later = seed.prefixes
    assert rows[first]["step"] == seed.steps[0]
    assert f"{first}.meta" in rows[first]["files"]
    assert rows[first]["meta_source"] == first
    for prefix in later:
        assert rows[prefix]["meta_source"] == first
        assert not any(name.endswith(".meta") for name in rows[prefix]["files"])
        assert rows[prefix]["status"] == "present"
    # Each state file names its own latest: the default one and the subset's latest_filename.
    assert {p for p, row in rows.items() if row["is_latest"]} == {seed.latest, seed.subset_latest}
    assert {v["name"] for v in rows[seed.subset_latest]["variables"]} == {"renamed/w"}
    w = next(v for v in rows[seed.latest]["variables"] if v["name"] == "w")
    assert w["shape"] == list(seed.variables["w"]) and w["dtype"] == "float32"
    assert report["problems"] == []


def test_tf2_manager_directory_uses_state_file_timestamps(checkpoint_root):
    run = factory.make_tf2_manager_run(checkpoint_root / "tf2", saves=3)
    report = scan_json(str(checkpoint_root / "tf2"), "--name", "tf2")
    rows = by_prefix(report)
    assert sorted(rows) == sorted(run.prefixes)
    for prefix, stamp in run.timestamps.items():
        assert dt.datetime.fromisoformat(rows[prefix]["saved_at"]).timestamp() == pytest.approx(stamp, abs=1e-3)
        assert rows[prefix]["meta_source"] is None
    assert [p for p, row in rows.items() if row["is_latest"]] == [run.latest]
    assert Run.objects.get(name="tf2").format == "tf2"
    names = {v["name"] for v in rows[run.latest]["variables"]}
    assert set(run.variables) <= names and "_CHECKPOINTABLE_OBJECT_GRAPH" not in names


def test_moved_directory_resolves_stale_absolute_paths_by_basename(checkpoint_root, tmp_path):
    seed = factory.make_seed_run(tmp_path / "elsewhere")
    moved = factory.move_run(tmp_path / "elsewhere", checkpoint_root / "moved")
    report = scan_json(moved.directory, "--name", "moved")
    rows = by_prefix(report)
    assert rows[seed.latest]["is_latest"]
    assert all(row["status"] == "present" for row in rows.values())
    assert report["problems"] == []


def test_deleted_data_shard_is_incomplete_and_exit_is_clean(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "run")
    factory.delete_data_shard(checkpoint_root / "run" / seed.prefixes[1])
    rows = by_prefix(scan_json(str(checkpoint_root / "run")))
    assert rows[seed.prefixes[1]]["status"] == "incomplete"
    assert any(".data-00000-of-" in p and "missing" in p for p in rows[seed.prefixes[1]]["problems"])
    assert rows[seed.prefixes[2]]["status"] == "present"


def test_truncated_index_is_corrupt_with_a_message(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "run")
    factory.truncate_index(checkpoint_root / "run" / seed.prefixes[0])
    rows = by_prefix(scan_json(str(checkpoint_root / "run")))
    assert rows[seed.prefixes[0]]["status"] == "corrupt"
    assert rows[seed.prefixes[0]]["problems"]
    assert rows[seed.latest]["status"] == "present"


def test_garbage_state_file_is_reported_and_checkpoints_still_listed(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "run")
    factory.write_garbage_state_file(checkpoint_root / "run")
    report = scan_json(str(checkpoint_root / "run"))
    assert report["problems"], "a garbage state file must be reported"
    assert set(seed.prefixes) <= set(by_prefix(report))


def test_sharded_save_lists_both_shards(checkpoint_root):
    sharded = factory.make_sharded_checkpoint(checkpoint_root / "sharded")
    row = by_prefix(scan_json(str(checkpoint_root / "sharded")))[sharded.prefix]
    assert row["status"] == "present"
    assert set(sharded.data_files) <= set(row["files"])
    assert {v["name"] for v in row["variables"]} == set(sharded.variables)


def test_rescan_is_incremental_and_marks_vanished_checkpoints_missing(checkpoint_root):
    seed = factory.make_seed_run(checkpoint_root / "run")
    scan_json(str(checkpoint_root / "run"), "--name", "run")
    run = Run.objects.get(name="run")

    counts = scanning.scan(run)
    assert (counts["created"], counts["updated"], counts["missing"]) == (0, 0, 0)

    gone = seed.prefixes[1]
    for name in os.listdir(checkpoint_root / "run"):
        if name.startswith(gone + "."):
            os.unlink(checkpoint_root / "run" / name)
    rows = by_prefix(scan_json(str(checkpoint_root / "run")))
    assert rows[gone]["status"] == "missing"
    assert Checkpoint.objects.get(run=run, prefix=seed.prefixes[2]).status == "present"


def test_directory_outside_roots_is_refused(checkpoint_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(CommandError, match="outside the checkpoint roots"):
        call_command("scan", str(outside), "--json", stdout=io.StringIO())
    assert not Run.objects.exists()


def test_symlink_inside_a_root_pointing_outside_is_refused(checkpoint_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, checkpoint_root / "escape")
    with pytest.raises(CommandError, match="outside the checkpoint roots"):
        call_command("scan", str(checkpoint_root / "escape"), stdout=io.StringIO())
    assert not Run.objects.exists()


def test_scan_all_rescans_every_run(checkpoint_root):
    factory.make_seed_run(checkpoint_root / "a", steps=(1, 2))
    factory.make_tf2_manager_run(checkpoint_root / "b", saves=2)
    scan_json(str(checkpoint_root / "a"))
    scan_json(str(checkpoint_root / "b"))
    shutil.rmtree(checkpoint_root / "b")
    os.makedirs(checkpoint_root / "b")
    out = io.StringIO()
    call_command("scan", "--all", "--json", stdout=out)
    report = json.loads(out.getvalue())["runs"]
    assert report["a"]["created"] == 0 and report["b"]["missing"] == 2


@pytest.mark.parametrize("while_reading", ["a row of a later chunk", "a row the scan will not find"])
def test_rows_another_writer_adds_between_two_stores_are_not_inserted_twice(checkpoint_root, monkeypatch,
                                                                           while_reading):
    # A store skips the look-up of its new prefixes when the run has only the rows the scan knows
    # of; a row a save job records between two stores must still be seen, whichever it is.
    from django.conf import settings

    from persistence import discovery

    directory = checkpoint_root / "raced"
    made = factory.make_many_tiny_checkpoints(directory, 6)
    run = Run.objects.create(name="raced", directory=str(directory))
    monkeypatch.setattr(scanning, "SCAN_STORE_ROWS", 1)  # store every chunk as it comes
    monkeypatch.setattr(scanning, "LOOK_UP_NEW_ROWS", 0)  # as for chunks of thousands
    listing = discovery.list_directory(str(directory), roots=settings.CHECKPOINT_ROOTS)
    chunks = list(discovery.describe_chunks(listing, listing.prefixes, chunk_size=2, fork_from=None))
    later = chunks[2][0]
    other = later.prefix if while_reading == "a row of a later chunk" else "elsewhere.ckpt-1"

    def chunks_with_a_writer_in_between():
        yield chunks[0]
        # What record_saved does for a checkpoint it just wrote, between two of the scan's stores.
        Checkpoint.objects.create(run=run, prefix=other, step=later.step, status=Checkpoint.PRESENT,
                                  saved_at=dt.datetime.now(dt.UTC))
        yield from chunks[1:]

    counts, found = scanning.record_scan(run, chunks_with_a_writer_in_between(), listing.state_files,
                                         listing.problems, now=None, stamp="")
    assert found == 6
    prefixes = list(run.checkpoints.values_list("prefix", flat=True))
    assert len(prefixes) == len(set(prefixes))
    assert set(made.prefixes) <= set(prefixes)
    if other == later.prefix:
        assert counts["created"] == 5 and counts["left_to_next_scan"] == 1
    else:
        assert counts["created"] == 6
