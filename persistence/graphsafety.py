"""Refuse TensorFlow graphs that would touch the file system or run code when we execute them.

TensorFlow's SECURITY.md: "TensorFlow models are programs". A ``.meta`` file uploaded by someone
else can read or write any file the worker can (``ReadFile``, ``WriteFile``, dataset readers),
run Python (``PyFunc``) or talk to other machines (tf.data service). Before a restore or a freeze
runs a graph we list its op types, including the ops inside its function library (a function
call hides its body from a scan of the top-level nodes), and refuse the dangerous ones unless the
run is marked trusted (DESIGN §6).

Every meta graph written by a ``Saver`` contains ``SaveV2``/``RestoreV2``/``MergeV2Checkpoints``,
which do touch files: they are the saver's own machinery and are allowed. What we refuse is a
graph that would *run* a writing saver op on our behalf: when ``fetches`` (what we are about to
run: the outputs and the restore op) is given, a ``SaveV2``/``MergeV2Checkpoints`` that those
fetches depend on is reported too, because restoring or running outputs never needs to write.

Parsing a graph is not running it: nothing here imports the graph into TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

# Ops that read, write, list or map files, or configure file systems.
FILE_SYSTEM_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration",
    "RecordInput",
    # Queue-based readers (TF1 input pipelines).
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
    "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2",
    "LMDBReader",
    # tf.data sources and sinks that open files.
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "TextLineDataset", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset",
    "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset", "MatchingFilesDataset",
    "ExperimentalMatchingFilesDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "SnapshotDatasetReader", "SnapshotNestedDatasetReader", "SnapshotChunkDataset",
    "ListSnapshotChunksDataset", "DistributedSave",
    # A cache's filename input may name any path (an empty one means memory, but it is a tensor we
    # cannot evaluate without running the graph).
    "CacheDataset", "CacheDatasetV2",
    # Lookup-table and warm-start ops that read vocabulary or checkpoint files by path.
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "GenerateVocabRemapping",
    "LoadAndRemapMatrix",
    # Summary writers create event files / SQLite databases.
    "CreateSummaryFileWriter", "CreateSummaryDbWriter",
    # tfdbg ops dump tensors to ``file://`` (or send them to ``grpc://``) URLs.
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
})

# Ops that run arbitrary Python in the worker.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

# Ops that connect to other machines.
NETWORK_OPS = frozenset({
    "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
    "RegisterDataset", "RegisterDatasetV2",
})

DENIED_OPS = FILE_SYSTEM_OPS | PYTHON_OPS | NETWORK_OPS

# The saver's own ops: present in every meta graph, allowed. Those that write are still refused
# when what we run depends on them (see the module docstring).
SAVER_READ_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice", "ShardedFilename",
                            "ShardedFilespec", "StringJoin"})
SAVER_WRITE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})


class UnsafeGraphError(Exception):
    """The graph contains ops that touch the file system, run Python or reach the network."""

    def __init__(self, ops: Iterable[str], source: str | None = None) -> None:
        self.ops = sorted(set(ops))
        where = f" in {source}" if source else ""
        super().__init__(
            f"refusing to run a graph with unsafe ops{where}: {', '.join(self.ops)} "
            "(they read or write files, run Python or reach the network; "
            "mark the run trusted to allow them)"
        )


def load_meta_graph_def(path: str | os.PathLike[str]) -> Any:
    """Parse a ``.meta`` file into a ``MetaGraphDef`` without importing or running it.

    Like ``tf.compat.v1.train.import_meta_graph``, binary is tried first, then text format (a
    ``Saver`` writes text with ``as_text=True``). Raises ``ValueError`` when it is neither, and
    ``FileNotFoundError`` when the file does not exist.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import meta_graph_pb2

    from persistence.files import open_regular_file

    # The resolved path, opened without following a link swapped in since, and only a regular
    # file (a FIFO would block the reader forever).
    with open(open_regular_file(os.path.realpath(path)), "rb") as handle:
        data = handle.read()
    meta_graph_def = meta_graph_pb2.MetaGraphDef()
    try:
        meta_graph_def.ParseFromString(data)
        # Random bytes sometimes parse as a message with only unknown fields; a real meta graph
        # always has a graph.
        if meta_graph_def.HasField("graph_def"):
            return meta_graph_def
    except message.DecodeError:
        pass
    meta_graph_def = meta_graph_pb2.MetaGraphDef()
    try:
        text_format.Merge(data.decode("utf-8"), meta_graph_def)
    except UnicodeDecodeError:
        raise ValueError(f"{os.path.basename(os.fspath(path))} is not a MetaGraphDef (binary or text)") from None
    except text_format.ParseError as exc:
        # Only where the text stopped parsing: protobuf's own message quotes the offending token,
        # and the file may not be a meta graph at all.
        where = f"line {exc.GetLine()}, column {exc.GetColumn()}" if exc.GetLine() else "its text"
        raise ValueError(
            f"{os.path.basename(os.fspath(path))} is not a MetaGraphDef (binary or text; cannot parse {where})"
        ) from None
    return meta_graph_def


def _graph_def_of(graph_or_meta: Any) -> Any:
    # A MetaGraphDef has a ``graph_def`` field; a GraphDef has ``node``.
    if hasattr(graph_or_meta, "meta_info_def"):
        return graph_or_meta.graph_def
    if hasattr(graph_or_meta, "as_graph_def"):  # a tf.Graph
        return graph_or_meta.as_graph_def()
    return graph_or_meta


def _all_node_defs(graph_def: Any) -> Iterator[Any]:
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _is_unsafe_node(node: Any) -> bool:
    if node.op in DENIED_OPS:
        return True
    if node.op == "PrintV2":
        # tf.print writes to a file when output_stream is "file://PATH"; stderr/stdout/log are fine.
        return _string_attr(node, "output_stream").startswith(b"file://")
    if node.op in ("DecodeProtoV2", "EncodeProto"):
        # descriptor_source may name a file of FileDescriptorSets; "local://" (the default) and
        # inline "bytes://" read nothing.
        source = _string_attr(node, "descriptor_source")
        return bool(source) and not source.startswith((b"local://", b"bytes://"))
    return False


def _string_attr(node: Any, key: str) -> bytes:
    # ``node.attr[key]`` would insert an empty entry (a map of messages) and so change the graph we
    # go on to import; meta graphs may omit attributes that have their default value.
    return node.attr[key].s if key in node.attr else b""


def unsafe_ops(graph_or_meta: Any, *, fetches: Iterable[str] | None = None) -> list[str]:
    """The unsafe op types in a ``GraphDef`` / ``MetaGraphDef`` (sorted, each once).

    Ops in the function library count. With ``fetches`` (node or tensor names we intend to run),
    writing saver ops that those fetches depend on count as well.
    """
    graph_def = _graph_def_of(graph_or_meta)
    found = {node.op for node in _all_node_defs(graph_def) if _is_unsafe_node(node)}
    if fetches is not None:
        found |= _writing_saver_ops_needed_by(graph_def, fetches)
    return sorted(found)


def check_graph(graph_or_meta: Any, *, fetches: Iterable[str] | None = None,
                allow_unsafe: bool = False, source: str | None = None) -> list[str]:
    """Raise :class:`UnsafeGraphError` for unsafe ops unless ``allow_unsafe``; return them."""
    found = unsafe_ops(graph_or_meta, fetches=fetches)
    if found and not allow_unsafe:
        raise UnsafeGraphError(found, source)
    return found


def node_name(name: str) -> str:
    """``"^scope/op"`` / ``"scope/op:1"`` -> ``"scope/op"``."""
    name = name[1:] if name.startswith("^") else name
    base, sep, index = name.rpartition(":")
    return base if sep and index.isdigit() else name


def _functions_used_by(node: Any, library: dict[str, Any]) -> Iterator[str]:
    if node.op in library:
        yield node.op
    for attr in node.attr.values():
        which = attr.WhichOneof("value")
        if which == "func":
            yield attr.func.name
        elif which == "list":
            for func in attr.list.func:
                yield func.name


def _writing_saver_ops_needed_by(graph_def: Any, fetches: Iterable[str]) -> set[str]:
    by_name = {node.name: node for node in graph_def.node}
    library = {function.signature.name: function for function in graph_def.library.function}
    found: set[str] = set()
    seen: set[str] = set()
    stack = [node_name(name) for name in fetches]
    functions: list[str] = []
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        node = by_name[name]
        if node.op in SAVER_WRITE_OPS:
            found.add(node.op)
        functions.extend(_functions_used_by(node, library))
        stack.extend(node_name(inp) for inp in node.input)
    # A called function may call others (through its own nodes' attrs).
    done: set[str] = set()
    while functions:
        fname = functions.pop()
        if fname in done or fname not in library:
            continue
        done.add(fname)
        for node in library[fname].node_def:
            if node.op in SAVER_WRITE_OPS:
                found.add(node.op)
            functions.extend(_functions_used_by(node, library))
    return found
