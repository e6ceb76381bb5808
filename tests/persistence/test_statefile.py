"""State files: our own text-format reader and writer, checked against TensorFlow's."""

from __future__ import annotations

import math
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persistence.statefile import (
    MAX_SNIFF_BYTES,
    MAX_STATE_FILE_BYTES,
    StateFileChanged,
    StateFileError,
    find_state_files,
    format_state_text,
    parse_state_text,
    prefix_base_name,
    read_state_bytes,
    read_state_file,
    write_state_file,
)
from tests import checkpoint_factory as factory

pytestmark = pytest.mark.tf


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _tf_parse(text: str):
    """What TensorFlow's get_checkpoint_state does with the text: text_format.Merge, then the check."""
    from google.protobuf import text_format
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    proto = CheckpointState()
    text_format.Merge(text, proto)
    if not proto.model_checkpoint_path:
        raise ValueError("Invalid checkpoint state")
    return proto


def _tf_text(latest, paths, stamps=None, last_preserved=None) -> str:
    from google.protobuf import text_format

    tf = _tf()
    proto = tf.compat.v1.train.generate_checkpoint_state_proto(
        "/abs/dir", latest, all_model_checkpoint_paths=list(paths),
        all_model_checkpoint_timestamps=stamps, last_preserved_timestamp=last_preserved,
    )
    return text_format.MessageToString(proto)


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_agrees(ours, proto) -> None:
    """Our StateFile holds what TensorFlow's proto holds (for names that are already base names)."""
    assert ours.raw_latest == proto.model_checkpoint_path
    assert ours.all_prefixes == list(dict.fromkeys(proto.all_model_checkpoint_paths))
    expected = {}
    for path, stamp in zip(proto.all_model_checkpoint_paths, proto.all_model_checkpoint_timestamps, strict=False):
        expected[path] = stamp
    assert ours.timestamps.keys() == expected.keys()
    assert all(_same_float(ours.timestamps[k], v) for k, v in expected.items())
    assert _same_float(ours.last_preserved_timestamp, proto.last_preserved_timestamp or None)


# --- reading what TensorFlow wrote ----------------------------------------------------------------


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return factory.make_seed_run(tmp_path_factory.mktemp("seed") / "run")


@pytest.fixture(scope="module")
def managed(tmp_path_factory):
    return factory.make_tf2_manager_run(tmp_path_factory.mktemp("tf2") / "run", saves=3)


def test_reads_tf1_saver_state_file_with_absolute_paths_as_base_names(seed):
    state = read_state_file(seed.directory)
    assert state.name == "checkpoint"
    assert state.latest == seed.latest
    assert state.all_prefixes == seed.prefixes
    assert state.raw_latest == os.path.join(seed.directory, seed.latest)
    # TF1's Saver writes no timestamps (see the module docstring of discovery's tests).
    assert state.timestamps == {}
    assert state.last_preserved_timestamp is None
    assert state.problem is None
    assert state.written_in is None  # absolute, but pointing here


def test_reads_state_file_with_its_own_latest_filename(seed):
    state = read_state_file(seed.directory, seed.subset_state_file)
    assert state.name == seed.subset_state_file
    assert state.latest == seed.subset_latest
    assert state.all_prefixes == seed.subset_prefixes


def test_reads_checkpoint_manager_timestamps_like_tensorflow(managed):
    tf = _tf()
    state = read_state_file(managed.directory)
    proto = tf.train.get_checkpoint_state(managed.directory)
    assert state.latest == os.path.basename(proto.model_checkpoint_path) == managed.latest
    assert state.all_prefixes == [os.path.basename(p) for p in proto.all_model_checkpoint_paths]
    assert state.timestamps == dict(zip(state.all_prefixes, proto.all_model_checkpoint_timestamps, strict=True))
    assert state.last_preserved_timestamp == proto.last_preserved_timestamp
    assert state.raw_latest == managed.latest  # CheckpointManager writes relative paths


def test_stale_absolute_paths_from_a_moved_directory_resolve_to_base_names(seed, tmp_path):
    src = tmp_path / "old"
    shutil.copytree(seed.directory, src)
    moved = factory.move_run(src, tmp_path / "new")
    state = read_state_file(moved.directory)
    assert state.latest == seed.latest
    assert state.all_prefixes == seed.prefixes
    assert state.raw_latest == os.path.join(str(src), seed.latest)
    assert state.written_in == str(src)
    assert state.problem is None
    assert read_state_file(moved.directory, seed.subset_state_file).latest == seed.subset_latest


def test_moved_checkpoint_manager_state_keeps_its_timestamps(managed, tmp_path):
    src = tmp_path / "old"
    shutil.copytree(managed.directory, src)
    moved = factory.move_run(src, tmp_path / "new")
    state = read_state_file(moved.directory)
    assert state.raw_latest == os.path.join(str(src), managed.latest)  # really absolute now
    assert state.written_in == str(src)
    assert state.timestamps == managed.timestamps
    assert state.last_preserved_timestamp == managed.last_preserved_timestamp


@pytest.mark.parametrize(
    ("path", "base"),
    [
        ("model.ckpt-5", "model.ckpt-5"),
        ("./model.ckpt-5", "model.ckpt-5"),
        ("/mnt/other/host/run/model.ckpt-5", "model.ckpt-5"),
        ("C:\\runs\\exp1\\model.ckpt-5", "model.ckpt-5"),  # written on Windows
        ("gs://bucket/run/ckpt-3", "ckpt-3"),
        ("/run/", None),
        ("..", None),
        ("C:\\runs\\exp1/", None),
        ("/mnt/run\\..", None),
        ("runs/exp1\\sub/model.ckpt-7", "model.ckpt-7"),  # both separators: the last one counts
        ("runs\\exp1/sub\\model.ckpt-8", "model.ckpt-8"),
        ("model.ckpt-9\n/", None),
        ("", None),
    ],
)
def test_prefix_base_name(path, base):
    assert prefix_base_name(path) == base


# --- our parser against protobuf's ---------------------------------------------------------------


# Names as TensorFlow could write them: any text without path separators, including quotes,
# backslashes, control characters and non-ASCII.
_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_stamps = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    paths=st.lists(_names, min_size=1, max_size=5),
    with_stamps=st.booleans(),
    stamps=st.lists(_stamps, min_size=5, max_size=5),
    last_preserved=st.one_of(st.none(), _stamps),
)
def test_parser_reads_whatever_tensorflow_writes(paths, with_stamps, stamps, last_preserved):
    text = _tf_text(paths[-1], paths, stamps[: len(paths)] if with_stamps else None, last_preserved)
    _assert_agrees(parse_state_text(text), _tf_parse(text))


_STRING_TOKENS = ['"a"', '"ckpt-1"', "'b c'", '"x/y"', '"\\n\\t\\\\"', '"\\101\\x42\\u00e9\\U0001F600"',
                  '"\\x4"', '"\\1"', '"\\q"', '"\\?"', '"\\777"', '"\\xff"', '"\\ud800"', '"é"', "''",
                  '"unterminated', "a"]
_NUMBER_TOKENS = ["1", "0", "-2.5", "1e3", "1E-3", "1.5f", "2F", "inf", "-inf", "nan", "NaN", "infinity", "inff",
                  "-Infinity", "01", "-01.5", "0x1f", "+3", ".5", "5.", "-.5", "1_000", "true", '"1"', "1.2.3"]
_GOOD_STRINGS = _STRING_TOKENS[:7] + _STRING_TOKENS[13:15]
_GOOD_NUMBERS = _NUMBER_TOKENS[:14] + _NUMBER_TOKENS[18:21]
_strings = st.lists(st.sampled_from(_GOOD_STRINGS), min_size=1, max_size=3).map(" ".join)
_numbers = st.sampled_from(_GOOD_NUMBERS)
_separator = st.sampled_from(["\n", " ", ",", ";", " # note\n", "\t"])


def _listed(values):
    return st.lists(values, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")


# Mostly well-formed entries (so that many files parse and get compared), some wild ones.
_good_entry = st.one_of(
    st.tuples(st.just("model_checkpoint_path: "), _strings, _separator),
    st.tuples(st.just("all_model_checkpoint_paths: "), st.one_of(_strings, _listed(_strings)), _separator),
    st.tuples(st.just("all_model_checkpoint_timestamps: "), st.one_of(_numbers, _listed(_numbers)), _separator),
    st.tuples(st.just("last_preserved_timestamp: "), _numbers, _separator),
).map("".join)
_wild_entry = st.tuples(
    st.sampled_from(["model_checkpoint_path", "all_model_checkpoint_paths", "all_model_checkpoint_timestamps",
                     "last_preserved_timestamp", "other_field", "Model_checkpoint_path", "[ext]"]),
    st.sampled_from([": ", ":", " ", ":: "]),
    st.one_of(st.lists(st.sampled_from(_STRING_TOKENS), min_size=1, max_size=3).map(" ".join),
              st.sampled_from(_NUMBER_TOKENS), _listed(st.sampled_from(_STRING_TOKENS + _NUMBER_TOKENS))),
    st.sampled_from(["\n", ",,", ";;", ""]),
).map("".join)
_entry = st.one_of(_good_entry, _good_entry, _good_entry, _wild_entry)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, max_size=6), st.sampled_from(["", "\n", "# header\n", "\ufeff"]), st.booleans())
def test_parser_never_disagrees_with_protobuf_on_generated_files(entries, head, add_latest):
    """Strict means: we may reject what protobuf accepts, but never accept it differently."""
    text = head + "".join(entries) + ('\nmodel_checkpoint_path: "ckpt-9"' if add_latest else "")
    try:
        ours = parse_state_text(text)
    except StateFileError:
        return
    try:
        proto = _tf_parse(text)
    except Exception as exc:  # noqa: BLE001 - any failure on TensorFlow's side is a disagreement
        pytest.fail(f"we accepted {text!r}, TensorFlow's parser refused it: {exc}")
    assert ours.raw_latest == proto.model_checkpoint_path
    bases = [prefix_base_name(p) for p in proto.all_model_checkpoint_paths]
    assert ours.all_prefixes == list(dict.fromkeys(b for b in bases if b is not None))
    expected = {}
    for base, stamp in zip(bases, proto.all_model_checkpoint_timestamps, strict=False):
        if base is not None:
            expected[base] = stamp
    assert ours.timestamps.keys() == expected.keys()
    assert all(_same_float(ours.timestamps[k], v) for k, v in expected.items())
    assert _same_float(ours.last_preserved_timestamp, proto.last_preserved_timestamp or None)


@pytest.mark.parametrize(
    "text",
    [f"model_checkpoint_path: {token}\n" for token in _STRING_TOKENS]
    + [f'model_checkpoint_path: "m" last_preserved_timestamp: {token}' for token in _NUMBER_TOKENS]
    + [f'model_checkpoint_path: "m" all_model_checkpoint_paths: ["a", "b"] all_model_checkpoint_timestamps: [{token}, 1]'
       for token in _NUMBER_TOKENS],
)
def test_every_escape_and_number_spelling_is_read_like_protobuf_or_refused(text):
    try:
        ours = parse_state_text(text)
    except StateFileError:
        return
    _assert_agrees(ours, _tf_parse(text))


@pytest.mark.parametrize(
    "text",
    [
        'model_checkpoint_path: "a\\tb\\001\\x41\\u00e9" \'c\'\nall_model_checkpoint_paths: ["x", \'y\']',
        'model_checkpoint_path: "a"; all_model_checkpoint_paths: "a", last_preserved_timestamp: 1.5f',
        '# written by hand\nmodel_checkpoint_path: "old"\nmodel_checkpoint_path: "new"  # last one wins\n',
        'all_model_checkpoint_paths: "p" all_model_checkpoint_timestamps: [1e3, -inf] '
        'all_model_checkpoint_paths: "q" model_checkpoint_path: "q" all_model_checkpoint_timestamps: 7',
        'model_checkpoint_path: "a" all_model_checkpoint_paths: [] last_preserved_timestamp: nan',
        'model_checkpoint_path: "\\303\\251t\\303\\251"',  # UTF-8 bytes as octal escapes
    ],
)
def test_parser_agrees_with_protobuf_on_hand_written_files(text):
    _assert_agrees(parse_state_text(text), _tf_parse(text))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "no model_checkpoint_path"),
        (b"all_model_checkpoint_paths: \"a\"\n", "no model_checkpoint_path"),
        (b'model_checkpoint_path: "a"\nunknown_field: 3\n', "unknown field"),
        (b'model_checkpoint_path "a"\n', "expected ':'"),
        (b'model_checkpoint_path: "a\n', "unexpected character"),
        (b'model_checkpoint_path: "a" last_preserved_timestamp: "x"', "expected a number"),
        (b'model_checkpoint_path: "a" last_preserved_timestamp: 0x10', "expected a number, found 0x10"),
        (b'model_checkpoint_path: "\\377"', "not valid UTF-8"),
        (b"\x00\x01\xff\xfe binary", "not text"),
        (factory.GARBAGE_STATE, "not text"),
    ],
)
def test_garbage_raises_state_file_error(tmp_path, content, reason):
    (tmp_path / "checkpoint").write_bytes(content)
    with pytest.raises(StateFileError, match=reason):
        read_state_file(str(tmp_path))
    with pytest.raises(Exception):  # noqa: B017 - TensorFlow refuses all of them too
        _tf_parse(content.decode("utf-8"))


def test_missing_state_file_raises_state_file_error(tmp_path):
    with pytest.raises(StateFileError, match="cannot read"):
        read_state_file(str(tmp_path), "nope")


def test_timestamps_that_do_not_match_paths_are_a_problem_not_an_error():
    state = parse_state_text(
        'model_checkpoint_path: "b" all_model_checkpoint_paths: "a" all_model_checkpoint_paths: "b" '
        "all_model_checkpoint_timestamps: 5"
    )
    assert state.timestamps == {"a": 5.0}  # paired as CheckpointManager pairs them (zip)
    assert "1 timestamps for 2 checkpoint paths" in state.problem


def test_large_canonical_state_file_parses_like_the_general_parser():
    names = [f"model.ckpt-{i}" for i in range(2000)]
    text = _tf_text(names[-1], names, [1.7e9 + i / 7 for i in range(2000)], 1.7e9 - 1)
    fast = parse_state_text(text)
    slow = parse_state_text(text.replace("\n", " \n"))  # not canonical: the tokenizer reads it
    assert fast == slow
    _assert_agrees(fast, _tf_parse(text))


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latest", "paths", "stamps", "last_preserved"),
    [
        ("model.ckpt-400", ["model.ckpt-300"], None, None),
        ("ckpt-3", ["ckpt-1", "ckpt-2"], {"ckpt-1": 1795678274.2381537, "ckpt-2": 1e-05, "ckpt-3": 1.5e20},
         1795678273.1743994),
        ('we"ird näme\t', ["x'y", "\x01ctl"], None, 3.0),
        ("ckpt-1", [], {"ckpt-1": 12.0}, None),
    ],
)
def test_writes_exactly_what_tensorflow_writes(latest, paths, stamps, last_preserved):
    ours = format_state_text(latest=latest, all_prefixes=paths, timestamps=stamps,
                             last_preserved_timestamp=last_preserved)
    order = [*paths, latest]
    theirs = _tf_text(latest, order, [stamps[p] for p in order] if stamps else None, last_preserved)
    assert ours == theirs


def test_written_state_file_is_read_back_by_tensorflow(seed, tmp_path):
    tf = _tf()
    directory = str(tmp_path / "run")
    shutil.copytree(seed.directory, directory)
    older = seed.prefixes[1]
    write_state_file(directory, latest=older, all_prefixes=seed.prefixes)
    write_state_file(directory, seed.subset_state_file, latest=seed.subset_prefixes[0],
                     all_prefixes=seed.subset_prefixes[:2])

    assert tf.train.latest_checkpoint(directory) == os.path.join(directory, older)
    state = tf.train.get_checkpoint_state(directory)
    assert list(state.all_model_checkpoint_paths) == [os.path.join(directory, p) for p in seed.prefixes]
    subset = tf.train.get_checkpoint_state(directory, latest_filename=seed.subset_state_file)
    assert subset.model_checkpoint_path == os.path.join(directory, seed.subset_prefixes[0])
    assert tf.train.latest_checkpoint(directory, latest_filename=seed.subset_state_file) == os.path.join(
        directory, seed.subset_prefixes[0])
    # Relative paths: the file is still right after the directory moves.
    assert 'model_checkpoint_path: "model.ckpt-200"\n' in (tmp_path / "run" / "checkpoint").read_text()


def test_rollback_restores_the_chosen_step_with_a_new_saver(seed, tmp_path):
    """"Make latest" on an older step: a fresh TF1 Saver restores that step, then saves on."""
    tf = _tf()
    directory = str(tmp_path / "run")
    shutil.copytree(seed.directory, directory)
    target = seed.prefixes[0]
    write_state_file(directory, latest=target, all_prefixes=seed.prefixes)
    with tf.Graph().as_default():
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(directory, seed.meta_prefix + ".meta"))
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(directory))
            step = sess.run(tf.compat.v1.train.get_global_step())
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step + 1, write_meta_graph=False)
    assert step == seed.steps[0]
    assert read_state_file(directory).latest == f"model.ckpt-{seed.steps[0] + 1}"


def test_checkpoint_manager_carries_on_after_a_prune_rewrite(managed, tmp_path):
    """Pruning ckpt-1 and rewriting the state: a new CheckpointManager adopts the survivors with
    their timestamps and keeps managing them (it deletes the oldest when max_to_keep is reached)."""
    tf = _tf()
    directory = str(tmp_path / "run")
    shutil.copytree(managed.directory, directory)
    first, *survivors = managed.prefixes
    for name in os.listdir(directory):
        if name.startswith(first + "."):
            os.unlink(os.path.join(directory, name))
    write_state_file(directory, latest=managed.latest, all_prefixes=survivors, timestamps=managed.timestamps,
                     last_preserved_timestamp=managed.last_preserved_timestamp)

    checkpoint = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=len(survivors))
    assert manager.latest_checkpoint == os.path.join(directory, managed.latest)
    assert manager.checkpoints == [os.path.join(directory, p) for p in survivors]
    saved = manager.save(checkpoint_number=managed.steps[-1] + 1)

    state = read_state_file(directory)
    assert state.latest == os.path.basename(saved)
    assert state.all_prefixes == [*survivors[1:], os.path.basename(saved)]
    assert state.timestamps[survivors[1]] == managed.timestamps[survivors[1]]  # carried over
    assert not os.path.exists(os.path.join(directory, survivors[0] + ".index"))  # rotated out


def test_latest_is_appended_when_missing_and_not_duplicated_when_present():
    assert parse_state_text(format_state_text(latest="c", all_prefixes=["a", "b"])).all_prefixes == ["a", "b", "c"]
    rollback = parse_state_text(format_state_text(latest="a", all_prefixes=["a", "b"]))
    assert (rollback.latest, rollback.all_prefixes) == ("a", ["a", "b"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latest": "/abs/model.ckpt-1", "all_prefixes": []}, "base names only"),
        ({"latest": "a", "all_prefixes": ["sub/b"]}, "base names only"),
        ({"latest": "", "all_prefixes": []}, "base names only"),
        ({"latest": "a", "all_prefixes": ["b", "b"]}, "duplicates"),
        ({"latest": "a", "all_prefixes": ["b"], "timestamps": {"a": 1.0}}, "no timestamp for b"),
        ({"latest": "checkpoint", "all_prefixes": []}, "same name as the state file"),
    ],
)
def test_write_refuses_what_tensorflow_could_not_use(tmp_path, kwargs, message):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "keep-me"\n')
    with pytest.raises(ValueError, match=message):
        write_state_file(str(tmp_path), **kwargs)
    assert (tmp_path / "checkpoint").read_text() == 'model_checkpoint_path: "keep-me"\n'


def test_write_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    write_state_file(str(tmp_path), latest="b", all_prefixes=["a", "b"])
    inode = os.stat(tmp_path / "checkpoint").st_ino
    write_state_file(str(tmp_path), latest="a", all_prefixes=["a"])
    assert os.stat(tmp_path / "checkpoint").st_ino != inode  # a new file moved into place
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert read_state_file(str(tmp_path)).latest == "a"


def test_a_conditional_write_replaces_only_the_content_it_was_computed_from(tmp_path):
    directory = str(tmp_path)
    write_state_file(directory, latest="a", all_prefixes=["a"])
    seen = read_state_bytes(directory)
    write_state_file(directory, latest="b", all_prefixes=["a", "b"])  # someone else's write meanwhile
    with pytest.raises(StateFileChanged):
        write_state_file(directory, latest="a", all_prefixes=["a"], unchanged_from=seen)
    assert read_state_file(directory).latest == "b" and os.listdir(tmp_path) == ["checkpoint"]
    write_state_file(directory, latest="a", all_prefixes=["a", "b"], unchanged_from=read_state_bytes(directory))
    assert read_state_file(directory).latest == "a"
    assert read_state_bytes(str(tmp_path / "nowhere")) is None


# --- finding state files -----------------------------------------------------------------------


def test_find_state_files_lists_every_latest_filename(seed):
    assert find_state_files(seed.directory) == ["checkpoint", seed.subset_state_file]


def test_find_state_files_reports_garbage_checkpoint_but_not_other_garbage(tmp_path):
    factory.write_garbage_state_file(tmp_path)
    (tmp_path / "notes.txt").write_text("model_checkpoint_path is a field name, but this is prose\n")
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"\x00" * 100)
    write_state_file(str(tmp_path), "best_checkpoint", latest="ckpt-1", all_prefixes=[])
    assert find_state_files(str(tmp_path)) == ["checkpoint", "best_checkpoint"]


def test_find_state_files_does_not_open_large_or_checkpoint_files(tmp_path):
    """Valid state text under names or sizes we skip is never considered (so never read)."""
    valid = format_state_text(latest="ckpt-1", all_prefixes=[])
    for name in ["ckpt-1.index", "ckpt-1.meta", "ckpt-1.data-00000-of-00001", "frozen.pb",
                 "checkpoint.tmp" + "0" * 32, ".checkpoint.partial-x1"]:
        (tmp_path / name).write_text(valid)
    (tmp_path / "huge_state").write_text(valid + "#" * MAX_SNIFF_BYTES)
    (tmp_path / "small_state").write_text(valid)
    assert find_state_files(str(tmp_path)) == ["small_state"]


def test_oversized_checkpoint_file_is_garbage_without_being_read(tmp_path):
    path = tmp_path / "checkpoint"
    path.write_text(format_state_text(latest="ckpt-1", all_prefixes=[]))
    os.truncate(path, MAX_STATE_FILE_BYTES + 1)  # sparse: costs no disk and no time
    with pytest.raises(StateFileError, match="larger than"):
        read_state_file(str(tmp_path))
    assert find_state_files(str(tmp_path)) == ["checkpoint"]  # reported as a broken state file


def test_find_state_files_of_missing_directory_is_empty(tmp_path):
    assert find_state_files(str(tmp_path / "nope")) == []


def test_parse_error_messages_say_where(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "a"\n\nbogus: 1\n')
    with pytest.raises(StateFileError, match="unknown field 'bogus' at line 3 column 1"):
        read_state_file(str(tmp_path))


def test_names_survive_round_trip_through_our_writer_and_reader():
    names = ["model.ckpt-1", "with space-2", "ünïcode-3", 'q"uote-4', "tab\tand\nnewline-5"]
    state = parse_state_text(format_state_text(latest=names[-1], all_prefixes=names))
    assert (state.latest, state.all_prefixes) == (names[-1], names)
