"""Read and write TensorFlow's checkpoint state files (``checkpoint`` and other ``latest_filename``s).

A state file is a ``CheckpointState`` protocol buffer in text format, e.g.::

    model_checkpoint_path: "/data/run/model.ckpt-400"
    all_model_checkpoint_paths: "/data/run/model.ckpt-300"
    all_model_checkpoint_paths: "/data/run/model.ckpt-400"
    all_model_checkpoint_timestamps: 1732600000.5
    last_preserved_timestamp: 1732590000.25

The web process must read these without importing TensorFlow, whose generated
``CheckpointState`` class lives inside the ``tensorflow`` package. So the message is declared
here from its four fields (protobuf's descriptor API, same names, numbers and types as TensorFlow's
``checkpoint_state.proto``) and read with protobuf's ``text_format.Merge``, exactly what
``tf.train.get_checkpoint_state`` does: whatever TensorFlow accepts is read with the same values,
and whatever it refuses is refused. Files made only of the lines TensorFlow itself writes take a
faster path (see ``_parse_canonical``), which gives the same values.

Paths in a state file may be relative to its directory (``CheckpointManager``,
``Saver(save_relative_paths=True)``) or absolute; absolute ones may come from another machine or
from before the directory was moved. Every path is therefore resolved to a base name inside the
directory. A rewrite keeps the style of the file it replaces: absolute paths into this
directory stay absolute (a TF1 ``Saver``'s default; tools reading the file may rely on them), and
everything else (relative paths, absolute ones from where the run used to live, a new file) is
written as base names, which stay right wherever the directory moves. In a bucket, full URLs into
the run's own prefix likewise stay full URLs.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from dataclasses import dataclass

from persistence import storage
from persistence.files import TEMP_MARKER, UnsafeFile, atomic_write_text, atomic_writer, open_regular_file

DEFAULT_STATE_FILE = "checkpoint"

# A state file for 100,000 checkpoints is about 5 MB; anything far beyond that is not one, and
# reading it whole would be the expensive mistake ``find_state_files`` exists to avoid.
MAX_STATE_FILE_BYTES = 64 * 1024 * 1024
# Files with other names are only sniffed when they are small: every run directory also holds
# event files, exports and checkpoint data, and most of them are not state files.
MAX_SNIFF_BYTES = 1024 * 1024

_REPEATED_FIELDS = ("all_model_checkpoint_paths", "all_model_checkpoint_timestamps")

# Names that are never state files, so not even opened. TensorFlow's own atomic writes leave
# ``NAME.tmp<32 hex>`` while in flight; ours carry persistence.files.TEMP_MARKER.
_NEVER_STATE_FILE = re.compile(
    r"\.index$|\.meta$|\.data-\d+-of-\d+$|\.pb$|\.tmp[0-9a-f]{32}$|^events\.out\.tfevents\."
    + "|" + re.escape(TEMP_MARKER)
)


class StateFileError(ValueError):
    """A state file that cannot be read or is not a valid ``CheckpointState`` text proto."""


class StateFileUnavailable(StateFileError):
    """A state object could not be fetched just now (a failed request): nothing is known of its content."""


class StateFileChanged(StateFileError):
    """The state file is no longer what a rewrite was computed from (a trainer saved meanwhile)."""


@dataclass
class StateFile:
    name: str  # "checkpoint" or another latest_filename
    latest: str | None  # prefix named by model_checkpoint_path (resolved to a base name)
    all_prefixes: list[str]  # all_model_checkpoint_paths, resolved to base names
    timestamps: dict[str, float]  # prefix -> all_model_checkpoint_timestamps entry
    last_preserved_timestamp: float | None
    problem: str | None = None  # set when the file could not be parsed or names missing files
    # model_checkpoint_path exactly as written (e.g. an absolute path from another machine), for
    # display; ``latest`` is what everything else should use.
    raw_latest: str | None = None
    # Where the absolute paths point (their directory), when that is not this directory: the run
    # was moved or copied from there. None for relative paths.
    written_in: str | None = None


# --- reading ---------------------------------------------------------------------------------

_state_class = None


def _checkpoint_state_class():
    global _state_class
    if _state_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        field = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name="persistence/checkpoint_state.proto", package="tensorflow", syntax="proto3"
        )
        message = proto.message_type.add(name="CheckpointState")
        message.field.add(name="model_checkpoint_path", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        message.field.add(name="all_model_checkpoint_paths", number=2, type=field.TYPE_STRING,
                          label=field.LABEL_REPEATED)
        message.field.add(name="all_model_checkpoint_timestamps", number=3, type=field.TYPE_DOUBLE,
                          label=field.LABEL_REPEATED)
        message.field.add(name="last_preserved_timestamp", number=4, type=field.TYPE_DOUBLE,
                          label=field.LABEL_OPTIONAL)
        # A pool of our own: TensorFlow's class, if a worker imported it, lives in the default one.
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _state_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.CheckpointState"))
    return _state_class


# protobuf's wording for the usual mistakes, said in ours; anything else is passed on as it is.
_PROTOBUF_REASONS = (
    (re.compile(r'Message type "[^"]*" has no field named "([^"]*)"\.?'), lambda m: f"unknown field {m[1]!r}"),
    (re.compile(r'Expected "(.)"\.?'), lambda m: f"expected {m[1]!r}"),
    (re.compile(r"Couldn't parse float: (.*)"), lambda m: f"expected a number, found {m[1]}"),
    (re.compile(r"Couldn't parse string: .*codec can't decode.*"), lambda m: "string is not valid UTF-8"),
    (re.compile(r"String missing ending quote.*"), lambda m: "unexpected character: a string has no ending quote"),
)
_PROTOBUF_WHERE = re.compile(r"\d+:\d+ : ")
_PROTOBUF_QUOTED_LINE = re.compile(r"'.*?': (?=Couldn't|Expected|String|Message|Invalid|Integer|Unknown)")


def _parse_error_reason(exc: Exception) -> str:
    """What protobuf's ``ParseError`` says went wrong, in our wording, and where."""
    reason = _PROTOBUF_WHERE.sub("", str(exc), count=1)
    line_no, column = exc.GetLine(), exc.GetColumn()
    # protobuf quotes the rest of the line before its reason; the position says enough.
    reason = _PROTOBUF_QUOTED_LINE.sub("", reason, count=1)
    for pattern, say in _PROTOBUF_REASONS:
        if match := pattern.fullmatch(reason):
            reason = say(match)
            break
    return f"{reason} at line {line_no} column {column}" if line_no else reason


def _parse_text_format(text: str) -> dict[str, object]:
    from google.protobuf import text_format

    state = _checkpoint_state_class()()
    try:
        text_format.Merge(text, state)
    except text_format.ParseError as exc:
        raise StateFileError(_parse_error_reason(exc)) from None
    return {
        "model_checkpoint_path": state.model_checkpoint_path,
        "all_model_checkpoint_paths": list(state.all_model_checkpoint_paths),
        "all_model_checkpoint_timestamps": list(state.all_model_checkpoint_timestamps),
        "last_preserved_timestamp": state.last_preserved_timestamp,
    }


# Exactly the lines TensorFlow writes (no escapes, str() of a double, one field per line). A file
# made only of such lines is read with two C-level regex passes instead of text_format's tokenizer,
# which matters for a 100,000-checkpoint state file re-read on every scan (bench/statefile.py).
# Anything else, including any escape, goes to text_format; both give the same values here.
_CANONICAL_LINE_PATTERN = (
    r'(model_checkpoint_path|all_model_checkpoint_paths): "([^"\\\n]*)"\n'
    r"|(all_model_checkpoint_timestamps|last_preserved_timestamp): "
    r"(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:e[-+]\d+)?|-?inf|nan)\n"
)
_CANONICAL_FILE = re.compile(f"(?:{_CANONICAL_LINE_PATTERN})+")
_CANONICAL_LINE = re.compile(_CANONICAL_LINE_PATTERN)


def _parse_canonical(text: str) -> dict[str, object] | None:
    if not _CANONICAL_FILE.fullmatch(text):
        return None
    values: dict[str, object] = {name: [] for name in _REPEATED_FIELDS}
    for string_field, string, float_field, number in _CANONICAL_LINE.findall(text):
        if string_field == "all_model_checkpoint_paths":
            values[string_field].append(string)
        elif string_field:
            values[string_field] = string
        elif float_field == "all_model_checkpoint_timestamps":
            values[float_field].append(float(number))
        else:
            values[float_field] = float(number)
    return values


def parse_state_text(text: str, name: str = DEFAULT_STATE_FILE, directory: str | None = None) -> StateFile:
    """Parse the text of a state file called ``name``; raise :class:`StateFileError` if invalid.

    ``directory`` is only used to tell whether absolute paths point somewhere else.
    """
    values = _parse_canonical(text) or _parse_text_format(text)
    raw_latest = values.get("model_checkpoint_path")
    if not raw_latest:
        # TensorFlow's get_checkpoint_state raises "Invalid checkpoint state" for this too.
        raise StateFileError("no model_checkpoint_path")
    raw_paths: list[str] = values["all_model_checkpoint_paths"]  # type: ignore[assignment]
    raw_stamps: list[float] = values["all_model_checkpoint_timestamps"]  # type: ignore[assignment]

    problems = []
    latest = prefix_base_name(raw_latest)
    bases = [prefix_base_name(raw) for raw in raw_paths]
    unique: dict[str, None] = {}  # ordered set: duplicates collapse, the first position counts
    timestamps: dict[str, float] = {}
    for raw, base in zip(raw_paths, bases, strict=True):
        if base is None:
            problems.append(f"unusable checkpoint path {raw!r}")
        else:
            unique[base] = None
    all_prefixes = list(unique)
    if latest is None:
        problems.append(f"unusable model_checkpoint_path {raw_latest!r}")
    if raw_stamps:
        if len(raw_stamps) != len(raw_paths):
            problems.append(f"{len(raw_stamps)} timestamps for {len(raw_paths)} checkpoint paths")
        # Like CheckpointManager's recovery: zip() pairs them, a later duplicate's time wins.
        for base, stamp in zip(bases, raw_stamps, strict=False):
            if base is not None:
                timestamps[base] = stamp
    last_preserved = values.get("last_preserved_timestamp")
    return StateFile(
        name=name,
        latest=latest,
        all_prefixes=all_prefixes,
        timestamps=timestamps,
        # proto3 cannot tell 0.0 from unset, and TensorFlow never writes 0.0.
        last_preserved_timestamp=float(last_preserved) if last_preserved else None,
        problem="; ".join(problems) or None,
        raw_latest=raw_latest,
        written_in=_foreign_directory([raw_latest, *raw_paths], directory),
    )


def prefix_base_name(path: str) -> str | None:
    """The last component of a checkpoint path written on any machine (``/`` or ``\\``)."""
    # What follows the last separator of either kind (re.split(r"[/\\]", path)[-1], a third of the
    # cost, once per listed path of a state file that may list 100,000).
    base = path[max(path.rfind("/"), path.rfind("\\")) + 1 :]
    return None if base in ("", ".", "..") else base


def _foreign_directory(paths: list[str], directory: str | None) -> str | None:
    if directory is None or storage.is_url(directory):
        # A bucket has no local path to compare with: the entries are resolved by base name anyway.
        return None
    # Distinct directories only: realpath costs a system call per component, and a state file
    # may list 100,000 paths that all share one directory.
    if os.path is posixpath:  # what posixpath.isabs checks, without a call per path
        absolute = [p for p in paths if p.startswith("/")]
    else:
        absolute = [p for p in paths if os.path.isabs(p)]
    theres = dict.fromkeys(map(os.path.dirname, absolute))
    here = os.path.realpath(directory)
    for there in theres:
        if os.path.realpath(there) != here:
            return there
    return None


def read_state_file(directory: str, name: str = DEFAULT_STATE_FILE) -> StateFile:
    """Read ``directory/name``; raise :class:`StateFileError` if it is unreadable or not a state file.

    A state file that parses but has unusable entries (e.g. timestamps that do not match the
    paths) is returned with ``problem`` set.
    """
    data = read_state_bytes(directory, name)
    if data is None:
        raise StateFileError(f"cannot read state file {name}: No such file or directory")
    return _parse_bytes(data, name, directory)


def read_state_bytes(directory: str, name: str = DEFAULT_STATE_FILE) -> bytes | None:
    """The raw content of ``directory/name`` (None when there is no such file), to parse with
    :func:`parse_state_bytes` and later hand to ``write_state_file(unchanged_from=...)``.

    A directory in a bucket (``s3://...``) is read through ``persistence.storage``: one GET.
    """
    if storage.is_url(directory):
        try:
            return storage.storage_for(directory).read_bytes(storage.join(directory, name), limit=MAX_STATE_FILE_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateFileError(f"cannot read state file {name}: {exc}") from None
    try:
        # Never through a link and never a FIFO: TensorFlow writes state files as plain files, and
        # what a link points at could be anything (its text would then be echoed in a problem).
        with open(open_regular_file(os.path.join(directory, name)), "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_STATE_FILE_BYTES:
                raise StateFileError(f"{name} is larger than {MAX_STATE_FILE_BYTES} bytes: not a state file")
            return handle.read()
    except FileNotFoundError:
        return None
    except UnsafeFile as exc:
        raise StateFileError(f"cannot read state file {name}: {exc}") from None
    except OSError as exc:
        raise StateFileError(f"cannot read state file {name}: {exc.strerror or exc}") from exc


def read_state_version(directory: str, name: str = DEFAULT_STATE_FILE) -> tuple[bytes, str | None] | None:
    """Like :func:`read_state_bytes`, with what identifies that version for a conditional rewrite:
    the object's ETag in a bucket (one GET returns both), None for a local file (whose rewrite
    compares content instead). None when there is no such file."""
    if not storage.is_url(directory):
        data = read_state_bytes(directory, name)
        return None if data is None else (data, None)
    try:
        return storage.storage_for(directory).read_versioned(storage.join(directory, name),
                                                             limit=MAX_STATE_FILE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileUnavailable(f"cannot read state file {name}: {exc}") from None


def parse_state_bytes(data: bytes, name: str, directory: str) -> StateFile:
    """Parse what :func:`read_state_bytes` read; raise :class:`StateFileError` if it is not a state file."""
    return _parse_bytes(data, name, directory)


def _parse_bytes(data: bytes, name: str, directory: str) -> StateFile:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateFileError(f"{name} is not text (invalid UTF-8 at byte {exc.start})") from exc
    try:
        return parse_state_text(text, name, directory)
    except StateFileError as exc:
        raise StateFileError(f"{name} is not a valid checkpoint state file: {exc}") from None


def could_be_state_file(name: str, size: int) -> bool:
    """Cheap test on a directory entry: is it worth parsing ``name`` as a state file?

    ``checkpoint`` always is (if it turns out to be garbage, that is worth reporting).
    """
    if name == DEFAULT_STATE_FILE:
        return True
    return size <= MAX_SNIFF_BYTES and _NEVER_STATE_FILE.search(name) is None


def sniff_state_file(directory: str, name: str) -> StateFile | None:
    """The state file ``directory/name`` if it is one, else None.

    The default ``checkpoint`` name is always a state file: when it does not parse it comes back
    with ``problem`` set (garbage to report). Any other name that does not parse is simply not a
    state file. Never raises.
    """
    try:
        return read_state_file(directory, name)
    except StateFileError as exc:
        if name == DEFAULT_STATE_FILE:
            return StateFile(name=name, latest=None, all_prefixes=[], timestamps={},
                             last_preserved_timestamp=None, problem=str(exc))
        return None


def find_state_files(directory: str) -> list[str]:
    """Names of the files in ``directory`` that are state files, ``checkpoint`` first.

    A ``checkpoint`` file that does not parse is included (it is a broken state file, not some
    other file); see :func:`sniff_state_file`.
    """
    names = []
    if storage.is_url(directory):
        try:
            listed = storage.storage_for(directory).list(directory)
        except (OSError, ValueError):
            return []
        names = [e.name for e in listed if could_be_state_file(e.name, e.size)
                 and (e.name == DEFAULT_STATE_FILE or _NEVER_STATE_FILE.search(e.name) is None)]
        return _sniffed(directory, names)
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                # Names first: a run directory holds thousands of checkpoint files, and only the
                # few names that could be state files are worth a stat.
                if entry.name != DEFAULT_STATE_FILE and _NEVER_STATE_FILE.search(entry.name) is not None:
                    continue
                if entry.is_file() and could_be_state_file(entry.name, entry.stat().st_size):
                    names.append(entry.name)
    except OSError:
        return []
    return _sniffed(directory, names)


def _sniffed(directory: str, names: list[str]) -> list[str]:
    # ``checkpoint`` is a state file whatever it holds (sniff_state_file never turns it away):
    # parsing it here, a 10,000-line file for a large run, would only be thrown away.
    return [name for name in order_state_file_names(names)
            if name == DEFAULT_STATE_FILE or sniff_state_file(directory, name) is not None]


def order_state_file_names(names: list[str]) -> list[str]:
    """``checkpoint`` first, then the others by name: the order in which their timestamps count."""
    return sorted(names, key=lambda n: (n != DEFAULT_STATE_FILE, n))


# --- writing ---------------------------------------------------------------------------------

# protobuf's CEscape with as_utf8=True, which is what text_format.MessageToString (and so
# TensorFlow) uses: non-ASCII text stays as it is.
_WRITE_ESCAPES = {i: f"\\{i:03o}" for i in range(32)} | {127: "\\177"}
_WRITE_ESCAPES |= {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r", ord('"'): '\\"',
                   ord("'"): "\\'", ord("\\"): "\\\\"}


def format_state_text(
    *,
    latest: str,
    all_prefixes: list[str],
    timestamps: dict[str, float] | None = None,
    last_preserved_timestamp: float | None = None,
    in_directory: str | None = None,
) -> str:
    """The text TensorFlow writes for this state (``text_format.MessageToString``).

    Paths are written as base names, or as absolute paths under ``in_directory`` when given.

    Like ``generate_checkpoint_state_proto``, ``latest`` is appended to ``all_prefixes`` when it
    is missing. Unlike it, a ``latest`` that is already listed is not appended a second time, so
    "make latest" on an older checkpoint keeps the list's order (oldest first, as retention reads
    it). Timestamps are written only when every listed prefix has one, because TensorFlow rejects
    a state whose timestamps do not match its paths.
    """
    for name in [latest, *all_prefixes]:
        if not name or prefix_base_name(name) != name:
            raise ValueError(f"state files hold base names only, got {name!r}")
    if len(set(all_prefixes)) != len(all_prefixes):
        raise ValueError("all_prefixes has duplicates")
    paths = list(all_prefixes)
    if latest not in paths:
        paths.append(latest)
    stamps: list[float] = []
    if timestamps:
        missing = [p for p in paths if p not in timestamps]
        if missing:
            raise ValueError(f"no timestamp for {', '.join(missing)}")
        stamps = [float(timestamps[p]) for p in paths]

    def written(prefix: str) -> str:
        return _escape(f"{in_directory.rstrip('/')}/{prefix}" if in_directory else prefix)

    lines = [f'model_checkpoint_path: "{written(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{written(p)}"' for p in paths]
    lines += [f"all_model_checkpoint_timestamps: {_format_double(s)}" for s in stamps]
    # proto3 does not print a double that is 0.0, so neither do we.
    if last_preserved_timestamp:
        lines.append(f"last_preserved_timestamp: {_format_double(float(last_preserved_timestamp))}")
    return "".join(line + "\n" for line in lines)


def _escape(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"checkpoint name is not valid UTF-8: {text!r}") from exc
    return text.translate(_WRITE_ESCAPES)


def _format_double(value: float) -> str:
    # text_format prints doubles with str(): the shortest text that reads back to the same value.
    return "nan" if math.isnan(value) else str(value)


def write_state_file(
    directory: str,
    name: str = DEFAULT_STATE_FILE,
    *,
    latest: str,
    all_prefixes: list[str],
    timestamps: dict[str, float] | None = None,
    last_preserved_timestamp: float | None = None,
    unchanged_from: bytes | None = None,
    if_match: str | None = None,
) -> None:
    """Atomically (re)write ``directory/name`` as TensorFlow would write it.

    ``tf.train.latest_checkpoint`` / ``get_checkpoint_state`` read it back, and a new ``Saver`` or
    ``CheckpointManager`` carries on in the directory. Used to prune (rewrite after deleting) and
    to "make latest" (rollback). The file keeps its mode and its path style (see the module's
    docstring); see :func:`format_state_text` for the rules.

    With ``unchanged_from`` (the content the new state was computed from), the file is replaced
    only if it still holds exactly that content, compared after the new file is written and
    synced, just before the replace; otherwise nothing changes and :class:`StateFileChanged` is
    raised. A trainer does not take our locks, so this is the only way to notice that its
    ``Saver`` rewrote the file meanwhile; comparing content rather than mtime also catches two
    writes within the file system's timestamp resolution.

    In a bucket (``s3://...``) the object is never written unconditionally: ``if_match`` is the
    ETag :func:`read_state_version` returned with ``unchanged_from``, and the store replaces the
    object only if it still has that ETag (one conditional PUT, checked and written by the store
    in one step); without ``if_match`` the object is created only if there is none. Either
    precondition failing raises :class:`StateFileChanged` and changes nothing.
    """
    if latest == name:
        # TensorFlow refuses this too: the state file would overwrite the checkpoint's own name.
        raise ValueError(f"checkpoint {latest!r} has the same name as the state file")
    if storage.is_url(directory):
        _put_state_object(directory, name, latest=latest, all_prefixes=all_prefixes, timestamps=timestamps,
                          last_preserved_timestamp=last_preserved_timestamp, unchanged_from=unchanged_from,
                          if_match=if_match)
        return
    text = format_state_text(latest=latest, all_prefixes=all_prefixes, timestamps=timestamps,
                             last_preserved_timestamp=last_preserved_timestamp,
                             in_directory=absolute_path_directory(directory, name))
    if unchanged_from is None:
        atomic_write_text(os.path.join(directory, name), text)
        return
    path = os.path.join(directory, name)
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        # Last moment before the replace: leaving the block raises (the temporary file is removed)
        # or replaces at once, the sync above being done.
        if read_state_bytes(directory, name) != unchanged_from:
            raise StateFileChanged(f"{name} changed while it was being rewritten")


def _put_state_object(directory: str, name: str, *, latest: str, all_prefixes: list[str],
                      timestamps: dict[str, float] | None, last_preserved_timestamp: float | None,
                      unchanged_from: bytes | None, if_match: str | None) -> None:
    if unchanged_from is not None and not if_match:
        raise ValueError("a state object is replaced only against the ETag it was read with")
    text = format_state_text(latest=latest, all_prefixes=all_prefixes, timestamps=timestamps,
                             last_preserved_timestamp=last_preserved_timestamp,
                             in_directory=_url_path_directory(directory, name, unchanged_from))
    try:
        storage.storage_for(directory).put_bytes(storage.join(directory, name), text.encode("utf-8"),
                                                 if_match=if_match, if_absent=not if_match)
    except storage.PreconditionFailed:
        raise StateFileChanged(f"{name} changed while it was being rewritten") from None
    except OSError as exc:
        raise StateFileError(f"cannot write state file {name}: {exc}") from None


def _url_path_directory(directory: str, name: str, replaced: bytes | None) -> str | None:
    """The run's URL when the state object being replaced names its checkpoints by full URLs
    into the run (what a trainer writing straight to the bucket leaves), else None (base names)."""
    if not replaced:
        return None
    first = replaced.split(b"\n", 1)[0].decode("utf-8", "replace")
    if not first.startswith("model_checkpoint_path:"):
        return None
    try:
        raw = parse_state_text(first + "\n", name, directory).raw_latest or ""
    except StateFileError:
        return None
    here = directory.rstrip("/")
    return here if raw.rsplit("/", 1)[0] == here else None


def absolute_path_directory(directory: str, name: str = DEFAULT_STATE_FILE) -> str | None:
    """The directory the existing state file ``directory/name`` writes its absolute paths with,
    when they point into ``directory`` itself (spelled as the file spells it); else None."""
    state = None
    try:
        # TensorFlow writes model_checkpoint_path first: one line tells the style, without parsing
        # a list of 100,000 paths again right before replacing it.
        with open(os.path.join(directory, name), "rb") as handle:
            first = handle.readline(64 * 1024).decode("utf-8")
        if first.startswith("model_checkpoint_path:"):
            state = parse_state_text(first, name, directory)
    except (OSError, UnicodeDecodeError, StateFileError):
        pass
    if state is None:
        try:
            state = read_state_file(directory, name)
        except StateFileError:
            return None
    raw = state.raw_latest or ""
    if not os.path.isabs(raw) or state.written_in is not None:
        return None
    there = os.path.dirname(raw)
    return there if os.path.realpath(there) == os.path.realpath(directory) else None
