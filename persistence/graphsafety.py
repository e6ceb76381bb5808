"""Run an untrusted TensorFlow graph only if every op in it is known to compute in memory.

TensorFlow's SECURITY.md: "TensorFlow models are programs". A ``.meta`` file written by someone
else can read or write any file the worker can, run Python or reach other machines, and
TensorFlow keeps registering new ops that do (a dataset built from a serialized graph, debug
dumpers, calibration savers, RPC clients). So the check is an allow-list, default deny
(:mod:`persistence.allowed_ops`), applied before anything is imported:

* to every node of the graph, not only to what the outputs need: what we run is not the only
  thing a graph can make TensorFlow do (init ops, table initialisers, functions instantiated on
  import), and a refusal that names every foreign op is easier to act on;
* to every function of its library (a call hides its body from a scan of the top-level nodes);
  a function attribute naming anything that is not in the library is refused, because
  TensorFlow would instantiate a registered op of that name as a one-node function;
* to any graph or function serialized inside a string constant (``GraphDef``, ``FunctionDef``,
  ``MetaGraphDef`` or ``SavedModel`` bytes), recursively. No allowed op executes such bytes, so
  this is a second line, but it reports what a hidden graph would have done.

The saver's own ops read and write files, and every ``Saver`` meta graph has them. Our code runs
exactly two things: the ``saver_def``'s restore op (with the filename tensor fed the checkpoint
being used) and the outputs asked for. So a restore op is allowed only on that restore path, under
the saver's name scope, with its prefix input being the saver's filename tensor (anything else
could read another checkpoint on disk); a save op only on the saver's save path, which nothing we
run depends on; and no saver op at all where the outputs depend on it, in a function, or in a
graph without a ``saver_def``.

Parsing a graph is not running it: nothing here imports the graph into TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from persistence.allowed_ops import ALLOWED_OPS, SAVER_OPS, SAVER_READ_OPS
from persistence.errors import Refusal, UnsafeGraph
from persistence.tfruntime import configure_environment

__all__ = ["ALLOWED_OPS", "SAVER_OPS", "Refusal", "UnsafeGraph", "UnsafeGraphError", "check_graph", "find_refusals",
           "load_meta_graph_def", "node_name", "unsafe_ops"]

# Graphs serialized inside graphs inside graphs...: beyond this depth we do not look, we refuse.
MAX_NESTING = 4
# TensorFlow's DataType enum value for strings (types.proto), to avoid importing its module here.
_DT_STRING = 7

# The name this exception had before it moved to persistence.errors; callers may use either.
UnsafeGraphError = UnsafeGraph


def load_meta_graph_def(path: str | os.PathLike[str]) -> Any:
    """Parse a ``.meta`` file into a ``MetaGraphDef`` without importing or running it.

    Like ``tf.compat.v1.train.import_meta_graph``, binary is tried first, then text format (a
    ``Saver`` writes text with ``as_text=True``). Raises ``ValueError`` when it is neither, and
    ``FileNotFoundError`` when the file does not exist.
    """
    configure_environment()
    from tensorflow.core.protobuf import meta_graph_pb2

    from persistence.graphoutline import parse_meta_graph, read_meta_bytes

    data = read_meta_bytes(path)
    return parse_meta_graph(data, meta_graph_pb2.MetaGraphDef, os.path.basename(os.fspath(path)))


def _graph_def_of(graph_or_meta: Any) -> Any:
    # A MetaGraphDef has a ``graph_def`` field; a GraphDef has ``node``.
    if hasattr(graph_or_meta, "meta_info_def"):
        return graph_or_meta.graph_def
    if hasattr(graph_or_meta, "as_graph_def"):  # a tf.Graph
        return graph_or_meta.as_graph_def()
    return graph_or_meta


def node_name(name: str) -> str:
    """``"^scope/op"`` / ``"scope/op:1"`` -> ``"scope/op"``."""
    name = name[1:] if name.startswith("^") else name
    base, sep, index = name.rpartition(":")
    return base if sep and index.isdigit() else name


def _tensor_key(name: str) -> str:
    # "save/Const" and "save/Const:0" are the same tensor; "^save/Const" is no tensor at all.
    if name.startswith("^"):
        return name
    base, sep, index = name.rpartition(":")
    return f"{base}:{index}" if sep and index.isdigit() else f"{name}:0"


def find_refusals(graph_or_meta: Any, *, fetches: Iterable[str] | None = None) -> list[Refusal]:
    """Every node of a ``GraphDef`` / ``MetaGraphDef`` (or ``tf.Graph``) that may not run.

    ``fetches`` are the node or tensor names we are about to run. The saver's restore op (from a
    ``MetaGraphDef``'s ``saver_def``) is always taken as run, with its filename tensor fed; every
    other fetch is an output, run with nothing of the saver fed.
    """
    graph_def = _graph_def_of(graph_or_meta)
    saver_def = None
    if hasattr(graph_or_meta, "meta_info_def") and graph_or_meta.HasField("saver_def"):
        saver_def = graph_or_meta.saver_def
    checker = _Checker()
    checker.check_graph_def(graph_def, "the graph", depth=0,
                            saver=_SaverPaths(graph_def, saver_def, fetches or []))
    return checker.refusals


def unsafe_ops(graph_or_meta: Any, *, fetches: Iterable[str] | None = None) -> list[str]:
    """The refused op types of a graph (sorted, each once); see :func:`find_refusals`."""
    return sorted({refusal.op for refusal in find_refusals(graph_or_meta, fetches=fetches)})


def check_graph(graph_or_meta: Any, *, fetches: Iterable[str] | None = None,
                allow_unsafe: bool = False, source: str | None = None) -> list[str]:
    """Raise :class:`~persistence.errors.UnsafeGraph` naming refused ops unless ``allow_unsafe``; return their types.

    ``allow_unsafe`` is for runs an owner marked trusted: the ops are still listed, so the caller
    can record what it let run.
    """
    refusals = find_refusals(graph_or_meta, fetches=fetches)
    if refusals and not allow_unsafe:
        raise UnsafeGraph(refusals, source)
    return sorted({refusal.op for refusal in refusals})


def _closure(by_name: dict[str, Any], roots: Iterable[str]) -> set[str]:
    # Data and control inputs alike: a control dependency runs its node as surely as a data input.
    seen: set[str] = set()
    stack = [node_name(name) for name in roots]
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(node_name(inp) for inp in by_name[name].input)
    return seen


@dataclass
class _Saver:
    """One saver's subgraph: its name scope, filename tensor and what its restore and save need."""

    scope: str  # "save/"
    filename: str  # normalised filename tensor: "save/Const:0"
    restore: set[str]
    save: set[str]


class _SaverPaths:
    """Which nodes of a graph our code runs, and which savers the graph holds.

    The ``saver_def`` names the saver we restore with. A graph may hold more (the seed saves a
    ``var_list`` subset with a second ``Saver``, scope ``save_1/``): those are recognised by the
    shape TensorFlow's saver builder gives them (``<scope>/Const`` filename tensor,
    ``<scope>/restore_all``, ``<scope>/control_dependency`` or ``<scope>/Identity``), and their ops
    are tolerated only where that structure puts them, because nothing we run reaches them.
    """

    def __init__(self, graph_def: Any, saver_def: Any, fetches: Iterable[str]) -> None:
        self.by_name = {node.name: node for node in graph_def.node}
        self.savers: dict[str, _Saver | None] = {}
        self.primary: _Saver | None = None
        fetches = list(fetches)
        if saver_def is not None and saver_def.restore_op_name and saver_def.filename_tensor_name:
            restore_op = node_name(saver_def.restore_op_name)
            fetches = [name for name in fetches if node_name(name) != restore_op]
            filename = _tensor_key(saver_def.filename_tensor_name)
            scope = node_name(filename).rpartition("/")[0]
            save = [saver_def.save_tensor_name] if saver_def.save_tensor_name else []
            self.primary = _Saver(scope=f"{scope}/" if scope else "", filename=filename,
                                  restore=_closure(self.by_name, [restore_op]), save=_closure(self.by_name, save))
            self.savers[self.primary.scope] = self.primary
        self.outputs = _closure(self.by_name, fetches)
        self.restore = self.primary.restore if self.primary else set()

    def _saver_at(self, scope: str) -> _Saver | None:
        if scope not in self.savers:
            saver = None
            if f"{scope}restore_all" in self.by_name and f"{scope}Const" in self.by_name:
                saver = _Saver(
                    scope=scope, filename=f"{scope}Const:0",
                    restore=_closure(self.by_name, [f"{scope}restore_all"]),
                    save=_closure(self.by_name, [f"{scope}control_dependency", f"{scope}Identity"]),
                )
            self.savers[scope] = saver
        return self.savers[scope]

    def refuses(self, node: Any) -> str | None:
        """Why a saver op at this node may not be in the graph, or None where a saver put it."""
        if node.name in self.outputs:
            return "the outputs depend on it (only the saver's restore op may run saver ops)"
        scope = node.name.rpartition("/")[0] + "/"
        saver = self._saver_at(scope) if "/" in node.name else None
        if saver is None:
            return "a saver op outside any saver"
        if node.name in self.restore and saver is not self.primary:
            return "the restore we run depends on another saver's op"
        if node.op in SAVER_READ_OPS:
            if node.name not in saver.restore:
                return "not on the saver's restore path"
            if not node.input or _tensor_key(node.input[0]) != saver.filename:
                return f"reads a prefix other than the saver's filename tensor {saver.filename!r}"
            return None
        if node.name in saver.restore:
            return "restoring does not need it (it writes)"
        if node.name not in saver.save:
            return "not on the saver's save path"
        return None


class _Checker:
    def __init__(self) -> None:
        self.refusals: list[Refusal] = []

    def refuse(self, node: Any, where: str, reason: str, op: str | None = None) -> None:
        self.refusals.append(Refusal(op=op or node.op, node=node.name, where=where, reason=reason))

    def check_graph_def(self, graph_def: Any, where: str, *, depth: int, saver: _SaverPaths) -> None:
        library = {function.signature.name for function in graph_def.library.function}
        for node in graph_def.node:
            if node.op in SAVER_OPS:
                reason = saver.refuses(node)
                if reason:
                    self.refuse(node, where, reason)
                self.check_node_attrs(node, where, library, depth=depth, allowed_op=True)
            else:
                self.check_node(node, where, library, depth=depth)
        for function in graph_def.library.function:
            self.check_function(function, library, depth=depth, parent=where)

    def check_function(self, function: Any, library: set[str], *, depth: int, parent: str) -> None:
        name = function.signature.name
        where = f"function '{name}'" if depth == 0 else f"function '{name}' of {parent}"
        if _is_registered_op(name):
            # A call by this name could run the op instead of the body we checked.
            self.refuse(function.signature, where, "a library function named like an op", op=name)
        for node in function.node_def:
            self.check_node(node, where, library, depth=depth)

    def check_node(self, node: Any, where: str, library: set[str], *, depth: int) -> None:
        if node.op in library:
            allowed = True  # a call of a library function, whose body is checked on its own
        elif node.op in ALLOWED_OPS:
            allowed = True
        else:
            allowed = False
            reason = "a saver op outside a saver" if node.op in SAVER_OPS else "not on the allow-list"
            self.refuse(node, where, reason)
        self.check_node_attrs(node, where, library, depth=depth, allowed_op=allowed)

    def check_node_attrs(self, node: Any, where: str, library: set[str], *, depth: int,
                         allowed_op: bool) -> None:
        if allowed_op and node.op == "PrintV2" and _string_attr(node, "output_stream").startswith(b"file://"):
            self.refuse(node, where, "prints to a file")
        for attr in node.attr.values():
            which = attr.WhichOneof("value")
            if which == "func":
                self.check_called(attr.func.name, node, where, library)
            elif which == "tensor":
                self.check_tensor(attr.tensor, node, where, depth=depth)
            elif which == "list":
                for func in attr.list.func:
                    self.check_called(func.name, node, where, library)
                for tensor in attr.list.tensor:
                    self.check_tensor(tensor, node, where, depth=depth)

    def check_called(self, name: str, node: Any, where: str, library: set[str]) -> None:
        if name not in library:
            self.refuse(node, where, f"calls {name!r}, which is not a function of the graph's library",
                        op=name)

    def check_tensor(self, tensor: Any, node: Any, where: str, *, depth: int) -> None:
        if tensor.dtype != _DT_STRING:
            return
        values: Iterable[bytes] = tensor.string_val
        if tensor.tensor_content:
            decoded = _decode_string_content(tensor)
            if decoded is None:
                self.refuse(node, where, "a string tensor that cannot be decoded to inspect it")
                return
            values = decoded
        inner = f"a graph serialized in '{node.name}' of {where}"
        for value in values:
            for kind, graph_def in _serialized_graphs(value):
                if depth + 1 > MAX_NESTING:
                    self.refuse(node, where, f"a {kind} nested too deep to inspect")
                    return
                self.check_graph_def(graph_def, inner, depth=depth + 1, saver=_SaverPaths(graph_def, None, []))


def _is_registered_op(name: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def _string_attr(node: Any, key: str) -> bytes:
    # ``node.attr[key]`` would insert an empty entry (a map of messages) and so change the graph we
    # go on to import; meta graphs may omit attributes that have their default value.
    return node.attr[key].s if key in node.attr else b""


def _serialized_graphs(value: bytes) -> Iterator[tuple[str, Any]]:
    """The graphs (as ``GraphDef``) that ``value`` parses into and that have at least one op.

    Short text ("model", a vocabulary word) often parses as an empty message of any type; only a
    parse that yields nodes with op types is a graph worth checking, and checking an accidental
    one can only refuse ops that are not allowed, never allow anything.
    """
    from google.protobuf import message
    from tensorflow.core.framework import function_pb2, graph_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    def parsed(cls: Any) -> Any:
        proto = cls()
        try:
            proto.ParseFromString(value)
        except (message.DecodeError, RuntimeError, ValueError):
            return None
        return proto

    def has_ops(graph_def: Any) -> bool:
        return any(node.op for node in graph_def.node) or any(
            node.op for function in graph_def.library.function for node in function.node_def
        )

    candidates = []
    if (graph := parsed(graph_pb2.GraphDef)) is not None:
        candidates.append(("GraphDef", graph))
    if (function := parsed(function_pb2.FunctionDef)) is not None:
        wrapped = graph_pb2.GraphDef()
        wrapped.library.function.append(function)
        candidates.append(("FunctionDef", wrapped))
    if (meta := parsed(meta_graph_pb2.MetaGraphDef)) is not None:
        candidates.append(("MetaGraphDef", meta.graph_def))
    if (saved := parsed(saved_model_pb2.SavedModel)) is not None:
        candidates.extend(("SavedModel", meta.graph_def) for meta in saved.meta_graphs)
    for kind, graph_def in candidates:
        if has_ops(graph_def):
            yield kind, graph_def


def _decode_string_content(tensor: Any) -> list[bytes] | None:
    # TensorFlow's packed encoding of a string tensor: one varint length per element, then the
    # bytes of all elements back to back. None when it does not add up.
    count = 1
    for dim in tensor.tensor_shape.dim:
        count *= max(dim.size, 0)
    data = tensor.tensor_content
    lengths, pos = [], 0
    for _ in range(count):
        length, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 35:
                return None
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(length)
    values = []
    for length in lengths:
        values.append(bytes(data[pos:pos + length]))
        pos += length
    return values if pos == len(data) else None
