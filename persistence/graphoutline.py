"""Read a ``.meta`` file: its bytes safely, and an outline of its graph without TensorFlow.

The freeze and verify forms suggest output nodes and check typed names against the graph in the
web process, which never imports TensorFlow (importing it takes seconds and half a gigabyte).
TensorFlow's generated ``MetaGraphDef`` class lives inside the ``tensorflow`` package, so the
outline parses the file with a three-message schema built from protobuf alone:
``MetaGraphDef.graph_def`` (field 2) -> ``GraphDef.node`` (1) -> ``NodeDef.name/op/input``
(1/2/3). Protobuf skips every other field, and those three are all the suggestion rule
(:func:`persistence.freeze.suggest_output_nodes`) reads. Parsing is not running: nothing of the
graph executes here, and the job checks everything again with TensorFlow's full schema.

:func:`persistence.graphsafety.load_meta_graph_def` reads and parses with the same functions,
only with TensorFlow's own message class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from persistence.files import open_regular_file

# Beyond this a .meta holds large constants; outlining it on a page view is not worth it.
MAX_OUTLINE_BYTES = 64 * 1024 * 1024
# How many unknown names an error message tries to match against the graph's names.
MATCHED_NAMES = 5
_VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})
_outline_class: Any = None


class OutlineTooLarge(ValueError):
    """The meta graph is larger than an outline may read."""


def read_meta_bytes(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> bytes:
    """The bytes of the ``.meta`` file at ``path``.

    The resolved path is opened without following a link swapped in since, and only when it is a
    regular file (a FIFO would block the reader forever): ``persistence.files.UnsafeFile``
    otherwise, ``FileNotFoundError`` when nothing is there, :class:`OutlineTooLarge` beyond
    ``max_bytes``.
    """
    with open(open_regular_file(os.path.realpath(path)), "rb") as handle:
        if max_bytes is not None and os.fstat(handle.fileno()).st_size > max_bytes:
            raise OutlineTooLarge(f"the meta graph is larger than {max_bytes // 2**20} MB")
        return handle.read()


def parse_meta_graph(data: bytes, new_message: Callable[[], Any], name: str, *,
                     allow_unknown_field: bool = False) -> Any:
    """Parse ``data`` into ``new_message()``: binary first, then text format, as TensorFlow does.

    A ``Saver`` writes text with ``as_text=True``. Raises ``ValueError`` naming ``name`` when the
    data is neither.
    """
    from google.protobuf import message, text_format

    meta_graph_def = new_message()
    try:
        meta_graph_def.ParseFromString(data)
        # Random bytes sometimes parse as a message with only unknown fields; a real meta graph
        # always has a graph.
        if meta_graph_def.HasField("graph_def"):
            return meta_graph_def
    except message.DecodeError:
        pass
    meta_graph_def = new_message()
    try:
        text_format.Merge(data.decode("utf-8"), meta_graph_def, allow_unknown_field=allow_unknown_field)
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not a MetaGraphDef (binary or text)") from None
    except text_format.ParseError as exc:
        # Only where the text stopped parsing: protobuf's own message quotes the offending token,
        # and the file may not be a meta graph at all.
        where = f"line {exc.GetLine()}, column {exc.GetColumn()}" if exc.GetLine() else "its text"
        raise ValueError(f"{name} is not a MetaGraphDef (binary or text; cannot parse {where})") from None
    return meta_graph_def


def _outline_message_class() -> Any:
    global _outline_class
    if _outline_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        proto = descriptor_pb2.FileDescriptorProto(
            name="persistence_graph_outline.proto", package="persistence_outline", syntax="proto3"
        )
        string, message, optional, repeated = 9, 11, 1, 3  # FieldDescriptorProto type/label numbers
        node = proto.message_type.add(name="NodeDef")
        node.field.add(name="name", number=1, type=string, label=optional)
        node.field.add(name="op", number=2, type=string, label=optional)
        node.field.add(name="input", number=3, type=string, label=repeated)
        graph = proto.message_type.add(name="GraphDef")
        graph.field.add(name="node", number=1, type=message, label=repeated,
                        type_name=".persistence_outline.NodeDef")
        meta = proto.message_type.add(name="MetaGraphDef")
        meta.field.add(name="graph_def", number=2, type=message, label=optional,
                       type_name=".persistence_outline.GraphDef")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _outline_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("persistence_outline.MetaGraphDef"))
    return _outline_class


class GraphOutline:
    """Node names and ops of a meta graph, and the suggested output nodes, read without TensorFlow."""

    def __init__(self, graph_def: Any) -> None:
        from persistence.freeze import suggest_output_nodes

        self.ops = {node.name: node.op for node in graph_def.node}
        self.suggestions = suggest_output_nodes(graph_def)
        self.placeholders = [name for name, op in self.ops.items() if op == "Placeholder"]
        self.variables = [name for name, op in self.ops.items() if op in _VARIABLE_OPS]

    @classmethod
    def read(cls, meta_path: str | os.PathLike[str], *, max_bytes: int = MAX_OUTLINE_BYTES) -> GraphOutline:
        """Outline the meta graph at ``meta_path`` (binary, else text format).

        Raises :class:`OutlineTooLarge`, ``ValueError`` (not a meta graph, or not a regular file)
        or ``OSError``.
        """
        data = read_meta_bytes(meta_path, max_bytes=max_bytes)
        meta = parse_meta_graph(data, _outline_message_class(), os.path.basename(os.fspath(meta_path)),
                                allow_unknown_field=True)
        return cls(meta.graph_def)

    def unknown_nodes_message(self, names: Sequence[str], *, matched: int = MATCHED_NAMES) -> str | None:
        """What to tell someone who typed output ``names`` the graph lacks; None when it has them all."""
        from persistence.graphsafety import node_name

        unknown = [n for n in names if node_name(n) not in self.ops]
        return _unknown_message(unknown, self.ops, "output", matched)

    def unknown_variables_message(self, names: Sequence[str], *, matched: int = MATCHED_NAMES) -> str | None:
        """What to tell someone who typed variable ``names`` the graph lacks; None when it has them all."""
        unknown = [n for n in names if n not in self.variables]
        return _unknown_message(unknown, self.variables, "variable", matched)


def _unknown_message(unknown: list[str], known: Any, what: str, matched: int) -> str | None:
    from persistence.restore import unknown_names_message

    if not unknown:
        return None
    message = unknown_names_message(unknown[:matched], known, what=what)
    extra = len(unknown) - matched
    more = f"; and {extra} more unknown name(s)" if extra > 0 else ""
    return message[0].upper() + message[1:] + more + "."


__all__ = ["MAX_OUTLINE_BYTES", "GraphOutline", "OutlineTooLarge", "parse_meta_graph", "read_meta_bytes"]
