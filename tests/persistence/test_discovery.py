"""Discovery: real checkpoint directories written by TensorFlow, scanned without loading a graph.

Fact checked in TensorFlow 2.21's source (training/saver.py, ``Saver.save``): the TF1 ``Saver``
calls ``update_checkpoint_state_internal`` without ``all_model_checkpoint_timestamps``, so its
state files carry no timestamps and ``saved_at`` falls back to the ``.index`` mtime; only
``CheckpointManager`` (and ``tf.train.Checkpoint`` through it) writes timestamps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persistence import checkpoint_index, forked_scan, listing
from persistence.discovery import (
    CORRUPT,
    INCOMPLETE,
    PRESENT,
    TF1,
    TF2,
    UNKNOWN_FORMAT,
    StateFile,
    VariableInfo,
    describe,
    describe_chunks,
    list_directory,
    parse_step,
    prefix_family,
    scan_directory,
    scan_result,
)
from tests import checkpoint_factory as factory

pytestmark = pytest.mark.tf

A_YEAR_AGO_NS = (1_700_000_000 * 10**9) + 123_456_789


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _by_prefix(result):
    return {c.prefix: c for c in result.checkpoints}


# Built once per module and copied (with mtimes) by tests that damage them.
@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return factory.make_seed_run(tmp_path_factory.mktemp("seed") / "run")


@pytest.fixture(scope="module")
def managed(tmp_path_factory):
    return factory.make_tf2_manager_run(tmp_path_factory.mktemp("tf2") / "run", saves=3)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return factory.make_sharded_checkpoint(tmp_path_factory.mktemp("sharded") / "run")


@pytest.fixture
def seed_copy(seed, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(seed.directory, directory)
    return str(directory)


# --- the seed pattern ------------------------------------------------------------------------------


def test_seed_run_steps_formats_and_meta_source_chain(seed):
    result = scan_directory(seed.directory)
    found = _by_prefix(result)
    assert result.format == TF1
    assert result.problems == []
    assert [c.prefix for c in result.checkpoints] == seed.prefixes + seed.subset_prefixes
    for prefix, step in zip(seed.prefixes, seed.steps, strict=True):
        ckpt = found[prefix]
        assert (ckpt.step, ckpt.status, ckpt.format) == (step, PRESENT, TF1)
        # write_meta_graph only on the first save: every later step restores with that .meta.
        assert ckpt.meta_source == seed.meta_prefix
        assert ckpt.has_own_meta == (prefix == seed.meta_prefix)
    # The subset saver never wrote a meta graph, and another family's .meta does not count.
    assert all(found[p].meta_source is None for p in seed.subset_prefixes)


def test_files_and_sizes_come_from_the_listing(seed):
    first = _by_prefix(scan_directory(seed.directory))[seed.meta_prefix]
    names = [f.name for f in first.files]
    assert names == [f"{seed.meta_prefix}.index", f"{seed.meta_prefix}.data-00000-of-00001",
                     f"{seed.meta_prefix}.meta"]
    for info in first.files:
        stat = os.stat(os.path.join(seed.directory, info.name))
        assert (info.size, info.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert first.size_bytes == sum(f.size for f in first.files)


def test_variables_come_from_the_index_with_shapes_dtypes_and_bytes(seed):
    found = _by_prefix(scan_directory(seed.directory))
    assert found[seed.latest].variables == [
        VariableInfo("b", (2,), "float32", 8),
        VariableInfo("global_step", (), "int64", 8),
        VariableInfo("w", (8, 2), "float32", 64),
    ]
    # Same names as TensorFlow's own listing.
    tf = _tf()
    listed = tf.train.list_variables(os.path.join(seed.directory, seed.latest))
    assert [(v.name, list(v.shape)) for v in found[seed.latest].variables] == [(n, s) for n, s in listed]
    assert found[seed.subset_latest].variables == [VariableInfo("renamed/w", (8, 2), "float32", 64)]


def test_both_state_files_are_found_with_their_latest(seed):
    result = scan_directory(seed.directory)
    states = {s.name: s for s in result.state_files}
    assert list(states) == ["checkpoint", seed.subset_state_file]
    assert states["checkpoint"].latest == seed.latest
    assert states["checkpoint"].all_prefixes == seed.prefixes
    assert states[seed.subset_state_file].latest == seed.subset_latest
    assert states[seed.subset_state_file].all_prefixes == seed.subset_prefixes
    assert all(s.problem is None for s in states.values())
    assert isinstance(states["checkpoint"], StateFile)


def test_tf1_saved_at_is_the_index_mtime(seed_copy, seed):
    index = os.path.join(seed_copy, seed.latest + ".index")
    os.utime(index, ns=(A_YEAR_AGO_NS, A_YEAR_AGO_NS))
    assert _by_prefix(scan_directory(seed_copy))[seed.latest].saved_at == A_YEAR_AGO_NS / 1e9


def test_meta_source_is_the_newest_earlier_meta_of_the_family(seed_copy, seed):
    # Give step 300 a meta of its own: 300 and 400 now restore with it, 200 still with 100's.
    shutil.copy(os.path.join(seed_copy, seed.meta_prefix + ".meta"), os.path.join(seed_copy, "model.ckpt-300.meta"))
    found = _by_prefix(scan_directory(seed_copy))
    assert [found[p].meta_source for p in seed.prefixes] == [
        "model.ckpt-100", "model.ckpt-100", "model.ckpt-300", "model.ckpt-300"]


def test_meta_source_survives_its_checkpoint_being_pruned(seed_copy, seed):
    """Retention keeps the only .meta alive after deleting its checkpoint's index and data."""
    for suffix in [".index", ".data-00000-of-00001"]:
        os.unlink(os.path.join(seed_copy, seed.meta_prefix + suffix))
    result = scan_directory(seed_copy)
    found = _by_prefix(result)
    assert seed.meta_prefix not in found
    assert all(found[p].meta_source == seed.meta_prefix for p in seed.prefixes[1:])
    assert [f.name for f in result.orphans] == [seed.meta_prefix + ".meta"]


def test_no_meta_source_before_the_first_meta(seed_copy, seed):
    os.rename(os.path.join(seed_copy, seed.meta_prefix + ".meta"), os.path.join(seed_copy, "model.ckpt-300.meta"))
    found = _by_prefix(scan_directory(seed_copy))
    assert [found[p].meta_source for p in seed.prefixes] == [None, None, "model.ckpt-300", "model.ckpt-300"]


def test_checkpoint_without_a_step(tmp_path):
    tf = _tf()
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("v", [1])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "model.ckpt"))
    (ckpt,) = scan_directory(str(tmp_path)).checkpoints
    assert (ckpt.prefix, ckpt.step, ckpt.meta_source, ckpt.status) == ("model.ckpt", None, "model.ckpt", PRESENT)


@pytest.mark.parametrize(
    ("prefix", "step", "family"),
    [("model.ckpt-1000", 1000, "model.ckpt"), ("ckpt-3", 3, "ckpt"), ("model.ckpt", None, "model.ckpt"),
     ("run-2-ckpt-07", 7, "run-2-ckpt"), ("model-ckpt-x", None, "model-ckpt-x"), ("-5", 5, "")],
)
def test_step_and_family_from_the_prefix(prefix, step, family):
    assert (parse_step(prefix), prefix_family(prefix)) == (step, family)


# --- TF2 object checkpoints -------------------------------------------------------------------------


def test_tf2_manager_run_format_steps_and_saved_at_from_state_timestamps(managed, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(managed.directory, directory)
    for prefix in managed.prefixes:  # so that the .index mtime cannot pass for the timestamp
        os.utime(directory / f"{prefix}.index", ns=(A_YEAR_AGO_NS, A_YEAR_AGO_NS))
    result = scan_directory(str(directory))
    assert result.format == TF2
    assert [(c.prefix, c.step, c.format, c.status) for c in result.checkpoints] == [
        (p, s, TF2, PRESENT) for p, s in zip(managed.prefixes, managed.steps, strict=True)]
    assert {c.prefix: c.saved_at for c in result.checkpoints} == managed.timestamps
    assert all(c.meta_source is None and not c.has_own_meta for c in result.checkpoints)
    (state,) = result.state_files
    assert (state.latest, state.last_preserved_timestamp) == (managed.latest, managed.last_preserved_timestamp)


def test_tf2_object_graph_is_not_a_variable(managed):
    (ckpt, *_) = scan_directory(managed.directory).checkpoints
    assert {v.name: v.shape for v in ckpt.variables} == managed.variables
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in dict(_tf().train.list_variables(os.path.join(managed.directory,
                                                                                           ckpt.prefix)))


# --- moved directories and state-file problems -----------------------------------------------------


def test_moved_run_resolves_stale_absolute_paths_by_base_name(seed_copy, seed, tmp_path):
    moved = factory.move_run(seed_copy, tmp_path / "moved")
    assert 'model_checkpoint_path: "/' in (Path(moved.directory) / "checkpoint").read_text()
    result = scan_directory(moved.directory)
    assert result.problems == []
    states = {s.name: s for s in result.state_files}
    assert states["checkpoint"].latest == seed.latest
    assert states["checkpoint"].written_in == seed_copy
    assert states[seed.subset_state_file].latest == seed.subset_latest
    assert all(s.problem is None for s in states.values())
    assert all(c.status == PRESENT for c in result.checkpoints)


def test_moved_tf2_run_keeps_its_timestamps(managed, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(managed.directory, src)
    moved = factory.move_run(src, tmp_path / "moved")
    result = scan_directory(moved.directory)
    assert result.problems == []
    assert {c.prefix: c.saved_at for c in result.checkpoints} == managed.timestamps


def test_garbage_state_file_is_reported_and_checkpoints_still_scanned(seed_copy, seed):
    factory.write_garbage_state_file(seed_copy)
    result = scan_directory(seed_copy)
    states = {s.name: s for s in result.state_files}
    assert states["checkpoint"].latest is None
    assert "not text" in states["checkpoint"].problem
    assert len(result.problems) == 1 and result.problems[0].startswith("garbage state file checkpoint:")
    assert states[seed.subset_state_file].latest == seed.subset_latest  # the other one still counts
    assert len(result.checkpoints) == 2 * len(seed.prefixes)
    assert all(c.status == PRESENT for c in result.checkpoints)


def test_state_file_naming_a_missing_checkpoint_gets_a_problem(seed_copy, seed):
    gone = seed.prefixes[0]
    os.unlink(os.path.join(seed_copy, gone + ".index"))
    result = scan_directory(seed_copy)
    states = {s.name: s for s in result.state_files}
    assert states["checkpoint"].problem == f"names checkpoints with no .index file: {gone}"
    assert result.problems == [f"state file checkpoint: names checkpoints with no .index file: {gone}"]
    assert states[seed.subset_state_file].problem is None
    assert [f.name for f in result.orphans] == [f"{gone}.data-00000-of-00001", f"{gone}.meta"]


def test_other_files_are_neither_checkpoints_nor_problems(seed_copy):
    Path(seed_copy, "events.out.tfevents.1700000000.host").write_bytes(b"\x00\x01binary")
    Path(seed_copy, "frozen.pb").write_bytes(b"\x0a\x03abc")
    Path(seed_copy, "notes.txt").write_text("trained on the spam corpus\n")
    Path(seed_copy, "model.ckpt-500_temp").mkdir()  # a TF save in progress
    before = scan_directory(seed_copy)
    assert before.problems == [] and before.orphans == []
    assert [s.name for s in before.state_files] == ["checkpoint", "subset_checkpoint"]


def test_unreadable_directory_is_a_problem_not_an_exception(tmp_path):
    result = scan_directory(str(tmp_path / "nope"))
    assert result.checkpoints == [] and result.format is None
    assert result.problems and "cannot read directory" in result.problems[0]


def test_empty_directory(tmp_path):
    result = scan_directory(str(tmp_path))
    assert (result.checkpoints, result.state_files, result.problems, result.format) == ([], [], [], None)


# --- damaged checkpoints --------------------------------------------------------------------------


def test_missing_shard_marks_incomplete_and_still_lists_variables(seed_copy, seed):
    victim = seed.prefixes[1]
    factory.delete_data_shard(os.path.join(seed_copy, victim))
    found = _by_prefix(scan_directory(seed_copy))
    ckpt = found[victim]
    assert ckpt.status == INCOMPLETE
    assert ckpt.problems == [f"missing data shard: {victim}.data-00000-of-00001"]
    # The index alone names the variables (TensorFlow reads data files only in get_tensor).
    assert [v.name for v in ckpt.variables] == ["b", "global_step", "w"]
    assert [f.name for f in ckpt.files] == [f"{victim}.index"]
    assert all(found[p].status == PRESENT for p in seed.prefixes if p != victim)


def test_sharded_save_lists_both_shards_present(sharded):
    (ckpt,) = scan_directory(sharded.directory).checkpoints
    assert ckpt.status == PRESENT and ckpt.problems == []
    assert [f.name for f in ckpt.files] == [f"{sharded.prefix}.index", *sharded.data_files, f"{sharded.prefix}.meta"]
    assert {v.name: v.shape for v in ckpt.variables} == sharded.variables


def test_missing_second_shard_is_named(sharded, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(sharded.directory, directory)
    factory.delete_data_shard(directory / sharded.prefix, shard=1)
    (ckpt,) = scan_directory(str(directory)).checkpoints
    assert ckpt.status == INCOMPLETE
    assert ckpt.problems == [f"missing data shard: {sharded.prefix}.data-00001-of-00002"]


def test_with_every_shard_gone_the_index_header_names_them(sharded, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(sharded.directory, directory)
    for shard in (0, 1):
        factory.delete_data_shard(directory / sharded.prefix, shard=shard)
    (ckpt,) = scan_directory(str(directory)).checkpoints
    assert ckpt.status == INCOMPLETE
    assert ckpt.problems == [f"missing data shards: {', '.join(sharded.data_files)}"]


def test_garbage_index_without_data_is_corrupt_and_says_no_data_file(tmp_path):
    (tmp_path / "ckpt-1.index").write_bytes(b"garbage")
    (ckpt,) = scan_directory(str(tmp_path)).checkpoints
    assert ckpt.status == CORRUPT
    assert ckpt.problems[1] == "no data file: ckpt-1.data-00000-of-NNNNN is missing"


def test_truncated_index_is_corrupt_with_tensorflows_message(seed_copy, seed):
    victim = seed.prefixes[2]
    factory.truncate_index(os.path.join(seed_copy, victim))
    found = _by_prefix(scan_directory(seed_copy))
    ckpt = found[victim]
    assert (ckpt.status, ckpt.format, ckpt.variables) == (CORRUPT, UNKNOWN_FORMAT, [])
    assert ckpt.problems[0].startswith(f"cannot read {victim}.index: ")
    assert "sstable" in ckpt.problems[0]  # TensorFlow's own words: "not an sstable (bad magic number)"
    assert all(found[p].status == PRESENT for p in seed.prefixes if p != victim)


@pytest.mark.parametrize("content", [b"", b"\x00" * 5000, os.urandom(300)])
def test_garbage_index_never_raises(tmp_path, content):
    (tmp_path / "ckpt-1.index").write_bytes(content)
    (tmp_path / "ckpt-1.data-00000-of-00001").write_bytes(b"x")
    (ckpt,) = scan_directory(str(tmp_path)).checkpoints
    assert ckpt.status == CORRUPT and ckpt.problems[0].startswith("cannot read ckpt-1.index: ")


def test_index_without_any_data_file_is_incomplete(seed_copy, seed):
    os.unlink(os.path.join(seed_copy, seed.latest + ".data-00000-of-00001"))
    os.unlink(os.path.join(seed_copy, seed.prefixes[0] + ".data-00000-of-00001"))
    Path(seed_copy, seed.prefixes[0] + ".data-00003-of-00002").write_bytes(b"")
    found = _by_prefix(scan_directory(seed_copy))
    assert found[seed.latest].status == INCOMPLETE
    assert found[seed.latest].problems == [f"missing data shard: {seed.latest}.data-00000-of-00001"]
    assert found[seed.prefixes[0]].problems == [
        f"missing data shards: {seed.prefixes[0]}.data-00000-of-00002, {seed.prefixes[0]}.data-00001-of-00002",
        f"unexpected data files: {seed.prefixes[0]}.data-00003-of-00002",
    ]


# --- incremental rescans --------------------------------------------------------------------------


def test_unchanged_checkpoints_are_not_read_again(seed_copy, seed):
    """Proof that the index is not opened: replace one .index with same-size garbage and restore
    its mtime. A real read would call it corrupt (the control scan does); the rescan does not."""
    first = scan_directory(seed_copy)
    known = {c.prefix: c.fingerprint for c in first.checkpoints}
    victim = os.path.join(seed_copy, seed.latest + ".index")
    stat = os.stat(victim)
    Path(victim).write_bytes(b"\x00" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    rescan = _by_prefix(scan_directory(seed_copy, known=known))
    ckpt = rescan[seed.latest]
    assert ckpt.unchanged and ckpt.status == PRESENT and ckpt.format == TF1
    assert ckpt.variables == []  # not re-read: the caller keeps what it recorded
    assert ckpt.fingerprint == known[seed.latest]
    assert ckpt.meta_source == seed.meta_prefix and ckpt.size_bytes == _by_prefix(first)[seed.latest].size_bytes
    assert all(c.unchanged for c in rescan.values())

    control = _by_prefix(scan_directory(seed_copy))[seed.latest]
    assert (control.unchanged, control.status) == (False, CORRUPT)


def test_changed_checkpoints_are_read_again(seed_copy, seed):
    first = scan_directory(seed_copy)
    known = {c.prefix: c.fingerprint for c in first.checkpoints}
    touched = os.path.join(seed_copy, seed.prefixes[0] + ".data-00000-of-00001")
    os.utime(touched, ns=(A_YEAR_AGO_NS, A_YEAR_AGO_NS))
    known[seed.prefixes[1]] = "tf1:somethingelse"
    del known[seed.prefixes[2]]

    rescan = _by_prefix(scan_directory(seed_copy, known=known))
    for prefix in seed.prefixes[:3]:
        assert not rescan[prefix].unchanged
        assert [v.name for v in rescan[prefix].variables] == ["b", "global_step", "w"]
    assert rescan[seed.prefixes[0]].fingerprint != known[seed.prefixes[0]]
    assert rescan[seed.prefixes[3]].unchanged


def test_corrupt_stays_corrupt_on_an_unchanged_rescan(seed_copy, seed):
    factory.truncate_index(os.path.join(seed_copy, seed.latest))
    first = scan_directory(seed_copy)
    known = {c.prefix: c.fingerprint for c in first.checkpoints}
    ckpt = _by_prefix(scan_directory(seed_copy, known=known))[seed.latest]
    assert ckpt.unchanged and ckpt.status == CORRUPT
    assert "unchanged since the last scan" in ckpt.problems[0]


def test_a_rescan_with_nothing_changed_does_not_import_tensorflow(seed):
    """Run in a fresh interpreter: persistence and the factory import no TensorFlow, and neither
    does a rescan that finds every fingerprint unchanged."""
    known = {c.prefix: c.fingerprint for c in scan_directory(seed.directory).checkpoints}
    script = f"""
import json, sys
import persistence.discovery, persistence.statefile, tests.checkpoint_factory
assert "tensorflow" not in sys.modules, "imported at module level"
result = persistence.discovery.scan_directory({seed.directory!r}, known=json.loads(sys.argv[1]))
assert all(c.unchanged for c in result.checkpoints), result
print("tensorflow" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(known)], cwd=root, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.strip() == "False"


# --- many checkpoints -------------------------------------------------------------------------------


def test_many_tiny_checkpoints_are_real_checkpoints(tmp_path):
    many = factory.make_many_tiny_checkpoints(tmp_path / "many", 60, first_step=10, step_every=10)
    result = scan_directory(many.directory)
    assert [c.prefix for c in result.checkpoints] == many.prefixes
    assert [c.step for c in result.checkpoints] == many.steps == list(range(10, 610, 10))
    assert all(c.status == PRESENT and c.meta_source == many.meta_prefix for c in result.checkpoints)
    assert {v.name for v in result.checkpoints[-1].variables} == set(many.variables)
    (state,) = result.state_files
    assert (state.latest, state.all_prefixes) == (many.prefixes[-1], many.prefixes)
    # A byte-identical copy under another name is read by TensorFlow as a checkpoint of its own.
    tf = _tf()
    assert tf.train.latest_checkpoint(many.directory) == os.path.join(many.directory, many.prefixes[-1])
    reader = tf.train.load_checkpoint(os.path.join(many.directory, many.prefixes[-1]))
    assert reader.get_tensor("w").tolist() == [1.0, 1.0]


def test_many_tiny_checkpoints_hardlinked(tmp_path):
    many = factory.make_many_tiny_checkpoints(tmp_path / "many", 5, hardlink=True)
    index = Path(many.directory, many.prefixes[-1] + ".index")
    assert index.stat().st_nlink == 5
    assert all(c.status == PRESENT for c in scan_directory(many.directory).checkpoints)


@given(st.text(alphabet="ab.-07\n\u0663\u00b2", max_size=12))
def test_step_parsing_agrees_with_the_documented_pattern(prefix):
    # parse_step avoids the regular expression for speed; it must read every name the same way.
    match = listing._STEP.fullmatch(prefix)
    expected = (match["family"], int(match["step"])) if match else (prefix, None)
    assert (prefix_family(prefix), parse_step(prefix)) == expected


# --- the two phases, and describing in a forked child ---------------------------------------------
#
# Run.scan lists a directory, then stores checkpoints chunk by chunk while a forked child reads
# the next ones (describe_chunks). Whatever the path, the result must be exactly scan_directory's.


@pytest.fixture(scope="module")
def mixed(seed, managed, sharded, tmp_path_factory):
    """One directory with a bit of everything: TF1 with a meta chain, TF2 object checkpoints, two
    data shards, a truncated index, a missing shard, garbage that is no checkpoint at all, an
    orphaned .meta, and two state files."""
    directory = tmp_path_factory.mktemp("mixed") / "run"
    shutil.copytree(seed.directory, directory)
    for other in (managed.directory, sharded.directory):
        for name in os.listdir(other):
            if name != "checkpoint":
                shutil.copy2(os.path.join(other, name), directory / name)
    factory.truncate_index(directory / seed.prefixes[2])
    factory.delete_data_shard(directory / seed.prefixes[1])
    (directory / "ckpt-99.index").write_bytes(b"garbage")
    shutil.copy2(directory / f"{seed.meta_prefix}.meta", directory / "model.ckpt-50.meta")
    return str(directory)


@pytest.fixture
def forks(monkeypatch):
    """The pids of the children describe_chunks forks (os.fork still forks)."""
    pids = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def _assert_reaped(pid):
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _flat(chunks):
    return [c for chunk in chunks for c in chunk]


def _chunks(listing, prefixes=None, **options):
    # Whether the machine running the tests is busy must not decide which path a test takes.
    return describe_chunks(listing, prefixes, only_when_idle=False, **options)


def test_mixed_directory_covers_what_the_fork_must_carry(mixed):
    result = scan_directory(mixed)
    statuses = {c.status for c in result.checkpoints}
    assert statuses == {PRESENT, INCOMPLETE, CORRUPT}
    assert {c.format for c in result.checkpoints} == {TF1, TF2, UNKNOWN_FORMAT}
    assert any(len(c.files) == 4 for c in result.checkpoints)  # two shards and a .meta
    assert [f.name for f in result.orphans] == ["model.ckpt-50.meta"]
    assert [s.name for s in result.state_files] == ["checkpoint", "subset_checkpoint"]


def test_listing_then_describing_is_the_scan(mixed):
    listing = list_directory(mixed)
    assert scan_result(listing, describe(listing)) == scan_directory(mixed)
    assert listing.prefixes == [c.prefix for c in scan_directory(mixed).checkpoints]


@pytest.mark.parametrize("chunk_size", [1, 4, 500])
@pytest.mark.parametrize("forked", [True, False], ids=["forked", "in_process"])
def test_chunks_forked_or_not_give_exactly_the_scan(mixed, forks, chunk_size, forked):
    listing = list_directory(mixed)
    chunks = list(_chunks(listing, chunk_size=chunk_size, fork_from=0 if forked else None))
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert scan_result(listing, _flat(chunks)) == scan_directory(mixed)
    assert len(forks) == (1 if forked else 0)
    for pid in forks:
        _assert_reaped(pid)


def test_forked_rescan_with_known_fingerprints_is_the_scan(mixed, forks):
    known = {c.prefix: c.fingerprint for c in scan_directory(mixed).checkpoints}
    prefixes = sorted(known)
    del known[prefixes[0]]
    known[prefixes[1]] = "tf1:stale"
    expected = scan_directory(mixed, known=known)
    assert sum(c.unchanged for c in expected.checkpoints) == len(prefixes) - 2
    listing = list_directory(mixed)
    assert scan_result(listing, _flat(_chunks(listing, known=known, fork_from=0))) == expected
    assert len(forks) == 1


def test_forks_only_when_enough_indexes_must_be_read(mixed, forks):
    listing = list_directory(mixed)
    count = len(listing.prefixes)
    _flat(_chunks(listing, fork_from=count + 1))
    known = {c.prefix: c.fingerprint for c in scan_directory(mixed).checkpoints}
    _flat(_chunks(listing, known=known, fork_from=1))  # nothing new: nothing to read
    assert forks == []
    _flat(_chunks(listing, fork_from=count))
    assert len(forks) == 1


@pytest.mark.parametrize(
    ("cpus", "load", "forked"), [(2, 0.3, True), (2, 1.2, True), (2, 1.8, False), (1, 0.0, False), (8, 6.0, True)]
)
def test_forks_only_with_a_processor_to_spare(mixed, forks, monkeypatch, cpus, load, forked):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    listing = list_directory(mixed)
    assert scan_result(listing, _flat(describe_chunks(listing, fork_from=1))) == scan_directory(mixed)
    assert len(forks) == (1 if forked else 0)


def test_chunks_follow_the_order_asked_for(mixed):
    listing = list_directory(mixed)
    wanted = list(reversed(listing.prefixes))
    assert [c.prefix for c in _flat(_chunks(listing, wanted, fork_from=None, chunk_size=3))] == wanted
    assert [c.prefix for c in describe(listing, wanted[:2])] == wanted[:2]
    # Forked, the first chunk comes first and each chunk keeps the order; chunks may interleave.
    chunks = [[c.prefix for c in chunk] for chunk in _chunks(listing, wanted, fork_from=0, chunk_size=3)]
    assert chunks[0] == wanted[:3]
    assert sorted(chunks) == sorted(wanted[i : i + 3] for i in range(0, len(wanted), 3))


def test_the_parent_describes_from_the_back_while_the_child_is_slow(mixed, forks, monkeypatch):
    import time

    listing = list_directory(mixed)
    parent = os.getpid()
    real_read = checkpoint_index.IndexReader.read
    here = []

    def read(self, path_prefix):
        if os.getpid() == parent:
            here.append(os.path.basename(path_prefix))
        else:
            time.sleep(0.2)
        return real_read(self, path_prefix)

    monkeypatch.setattr(checkpoint_index.IndexReader, "read", read)
    chunks = list(_chunks(listing, fork_from=0, chunk_size=2))
    # The parent reads the first chunk, then from the back while the child is slow (how far it
    # gets depends on when the machine runs the child).
    assert {listing.prefixes[0], listing.prefixes[-1]} <= set(here)
    assert scan_result(listing, _flat(chunks)) == scan_directory(mixed)
    _assert_reaped(forks[0])


def test_a_child_that_dies_midway_is_replaced_by_reading_here(mixed, forks, monkeypatch):
    import time

    listing = list_directory(mixed)
    parent = os.getpid()
    real_read = checkpoint_index.IndexReader.read
    in_child, here = [], []

    def read(self, path_prefix):
        if os.getpid() == parent:
            here.append(os.path.basename(path_prefix))
            time.sleep(0.05)  # a slow parent leaves the middle chunks to the child
        else:
            in_child.append(path_prefix)
            if len(in_child) == 3:  # its first chunk (of two) is out: die in the next
                os._exit(3)  # as the OOM killer or a crash in a native library would end it
        return real_read(self, path_prefix)

    monkeypatch.setattr(checkpoint_index.IndexReader, "read", read)
    chunks = list(_chunks(listing, fork_from=0, chunk_size=2))
    # The chunk it died in (the third: the parent reads the first) was read here.
    assert listing.prefixes[4] in here
    assert scan_result(listing, _flat(chunks)) == scan_directory(mixed)
    (pid,) = forks
    _assert_reaped(pid)


def test_an_exception_in_the_child_never_reaches_the_callers_cleanup(mixed, monkeypatch, tmp_path):
    """The fork happens inside the caller's frames (Run.scan's transaction): an exception climbing
    out of the child would run their ``finally`` blocks there, e.g. a rollback on a shared socket."""
    listing = list_directory(mixed)
    parent, cleanups = os.getpid(), tmp_path / "cleanups"
    real_read = checkpoint_index.IndexReader.read

    def read(self, path_prefix):
        if os.getpid() != parent:
            raise KeyboardInterrupt
        return real_read(self, path_prefix)

    monkeypatch.setattr(checkpoint_index.IndexReader, "read", read)
    try:
        described = _flat(_chunks(listing, fork_from=0))
    finally:
        with open(cleanups, "a") as out:
            out.write(f"{os.getpid()}\n")
    assert cleanups.read_text().split() == [str(parent)]
    assert scan_result(listing, described) == scan_directory(mixed)


def test_a_stuck_child_is_ended_and_replaced(mixed, forks, monkeypatch):
    """Forking a process that has threads can leave a lock taken forever in the child: a child
    that hands over nothing for STALL_SECONDS is ended and its work done here."""
    import time

    listing = list_directory(mixed)
    parent = os.getpid()
    real_read = checkpoint_index.IndexReader.read

    def read(self, path_prefix):
        if os.getpid() != parent:
            time.sleep(60)  # stuck
        return real_read(self, path_prefix)

    monkeypatch.setattr(checkpoint_index.IndexReader, "read", read)
    monkeypatch.setattr(forked_scan, "STALL_SECONDS", 0.5)
    started = time.monotonic()
    described = _flat(_chunks(listing, fork_from=0))
    assert time.monotonic() - started < 20
    assert scan_result(listing, described) == scan_directory(mixed)
    _assert_reaped(forks[0])


def test_stopping_early_ends_the_child(mixed, forks):
    chunks = _chunks(list_directory(mixed), fork_from=0, chunk_size=1)
    assert len(next(chunks)) == 1
    (pid,) = forks
    chunks.close()
    _assert_reaped(pid)


def test_a_child_killed_from_outside_is_replaced(mixed, forks):
    listing = list_directory(mixed)
    chunks = _chunks(listing, fork_from=0, chunk_size=1)
    described = next(chunks)
    os.kill(forks[0], 9)
    described += _flat(chunks)
    assert scan_result(listing, described) == scan_directory(mixed)
    _assert_reaped(forks[0])


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "in_process"])
def test_files_deleted_after_the_listing(seed_copy, seed, forked):
    """Describing stats the files: one deleted since the listing (a concurrent prune) is not there."""
    listing = list_directory(seed_copy)
    gone, thinned = seed.prefixes[0], seed.prefixes[1]
    os.unlink(os.path.join(seed_copy, gone + ".index"))
    factory.delete_data_shard(os.path.join(seed_copy, thinned))
    found = _by_prefix(scan_result(listing, _flat(_chunks(listing, fork_from=0 if forked else None))))
    assert gone not in found
    assert found[thinned].status == INCOMPLETE
    assert [f.name for f in found[thinned].files] == [f"{thinned}.index"]
    assert found[thinned].problems == [f"missing data shard: {thinned}.data-00000-of-00001"]
    assert found[seed.latest].status == PRESENT


def test_many_tiny_checkpoints_forked_share_one_variable_list(tmp_path):
    many = factory.make_many_tiny_checkpoints(tmp_path / "many", 40)
    listing = list_directory(many.directory)
    described = _flat(_chunks(listing, fork_from=0, chunk_size=7))
    assert scan_result(listing, described) == scan_directory(many.directory)
    # Sent once, shared by every row: one list from the child, one for the chunks read here.
    assert len({id(c.variables) for c in described}) <= 2
