"""GraphDef mechanics for exports: variables into constants, size before encoding, encoding in pieces.

Everything here works on one GraphDef at a time and keeps at most one tensor's extra copy in
memory: a frozen graph is the size of the checkpoint, and each whole-graph copy is another of that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from persistence.tfruntime import import_tensorflow

# protobuf refuses to serialize or parse a message of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2**31 - 1

VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})


# --- size ------------------------------------------------------------------------------

# The repeated field that holds a tensor's values when they are not in tensor_content, by DataType.
_VALUE_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
                8: "scomplex_val", 9: "int64_val", 10: "bool_val", 14: "half_val", 17: "int_val",
                18: "dcomplex_val", 19: "half_val", 22: "uint32_val", 23: "uint64_val"}
# Per-node bytes beyond names and tensor payload (op, device, dtype/shape attrs, framing); generous.
_NODE_OVERHEAD = 128
# Below this, a constant is counted at its full shape without looking closer.
_SMALL_TENSOR = 64 * 1024


def _tensor_payload_bytes(tensor: Any, itemsizes: dict[int, int | None]) -> int:
    dtype = tensor.dtype
    if dtype not in itemsizes:
        tf = import_tensorflow()
        try:
            size = tf.as_dtype(dtype).size
        except (TypeError, ValueError):
            size = None
        itemsizes[dtype] = size if dtype not in (7, 20, 21) else None  # string, resource, variant
    itemsize = itemsizes[dtype]
    if itemsize is None:
        # Strings have no fixed width; they are small in practice, and measuring one tensor is cheap.
        return tensor.ByteSize()
    count = 1
    for dim in tensor.tensor_shape.dim:
        count *= max(dim.size, 0)
    full = count * itemsize
    if full > _SMALL_TENSOR:
        # A splat constant (tf.zeros([10**9])) stores one value, not its full shape.
        values = _VALUE_FIELD.get(dtype)
        n = len(getattr(tensor, values)) if values else 0
        if n:
            return n * itemsize
    return full


def estimate_graph_def_bytes(graph_def: Any) -> int:
    """An upper-bound-leaning estimate of ``graph_def``'s serialized size, without encoding it.

    Constant tensors are counted from their dtype and shape (what dominates a frozen graph), plus
    names, inputs and a fixed overhead per node; function library nodes count too.
    """
    itemsizes: dict[int, int | None] = {}
    total = 0
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    for node in nodes:
        total += _NODE_OVERHEAD + len(node.name) + len(node.op) + sum(len(i) + 2 for i in node.input)
        if node.op == "Const" and "value" in node.attr:
            total += _tensor_payload_bytes(node.attr["value"].tensor, itemsizes)
    return total


def exceeds_protobuf_limit(graph_def: Any, limit: int = PROTOBUF_LIMIT_BYTES) -> bool:
    """True when ``graph_def`` would be too large to serialize (protobuf's 2 GB limit by default)."""
    return estimate_graph_def_bytes(graph_def) > limit


# --- variables into constants ---------------------------------------------------------------


class _ReadOnUse:
    """The variable values of a conversion, each read from the session when it is asked for.

    TensorFlow's session conversion reads every variable at once before building any constant,
    so the restored variables, a NumPy copy of all of them and the constants built from those all
    exist together: three times the checkpoint. The conversion walks the values once, building
    one constant per value, so reading each on demand holds one NumPy copy at a time; with
    ``release`` the session's own copy is dropped as soon as it has been read, so that the
    restored variables shrink as the constants grow.
    """

    def __init__(self, sess: Any, pending: list[tuple[str, str, int]], tensor_data: type,
                 release: bool) -> None:
        self._sess, self._pending, self._tensor_data, self._release = sess, pending, tensor_data, release

    def items(self) -> Any:
        for node, tensor, dtype in self._pending:
            value = self._sess.run(tensor)
            if self._release:
                _release_variable(self._sess, node)
            yield node, self._tensor_data(numpy=value, dtype=dtype, index=None)
            del value

    def values(self) -> Any:
        # Read only for the input indices of function conversions, never for session graphs.
        for _node, _tensor, dtype in self._pending:
            yield self._tensor_data(numpy=None, dtype=dtype, index=None)


def _release_variable(sess: Any, node: str) -> None:
    """Drop variable ``node``'s value in ``sess`` (an empty tensor, or no resource), freeing its memory.

    The variable is unusable afterwards; only a session about to close may do this. Best effort:
    a variable this cannot assign to keeps its value.
    """
    tf = import_tensorflow()
    from tensorflow.python.ops import gen_resource_variable_ops

    graph = sess.graph
    try:
        with graph.as_default(), graph.name_scope(None):
            variable = graph.get_operation_by_name(node)
            if variable.type == "VarHandleOp":
                # A resource variable's handle carries its shape: destroy the resource instead.
                release = gen_resource_variable_ops.destroy_resource_op(variable.outputs[0])
            else:
                empty = tf.zeros([0], dtype=tf.as_dtype(variable.get_attr("dtype")))
                release = tf.compat.v1.assign(variable.outputs[0], empty, validate_shape=False).op
        sess.run(release)
    except (TypeError, ValueError, KeyError, tf.errors.OpError):
        pass


def convert_session_variables(sess: Any, graph_def: Any, output_nodes: list[str], *,
                              allowlist: list[str] | None = None,
                              denylist: list[str] | None = None, release: bool = False) -> Any:
    """``tf.compat.v1.graph_util.convert_variables_to_constants``, one variable in memory at a time.

    Same selection of variables (the subgraph the outputs need, narrowed by ``allowlist`` and
    ``denylist``) and the same rewriting, by TensorFlow's own converter, so the GraphDef is the
    one TensorFlow would build; only the values are read lazily (see ``_ReadOnUse``). With
    ``release``, each converted variable is emptied in ``sess`` once read (the session must not
    be used for anything but closing afterwards).
    """
    # The converter's classes are private API, tied to the pinned TensorFlow release; a test
    # checks that the result equals TensorFlow's public function byte for byte.
    from tensorflow.python.framework import convert_to_constants as c2c
    from tensorflow.python.util import deprecation

    class _SessionValues(c2c._ConverterData):
        def __init__(self) -> None:
            with deprecation.silence():  # extract_sub_graph warns that it is TF1 API, as is this graph
                subgraph = c2c.graph_util.extract_sub_graph(graph_def, output_nodes)
            super().__init__(subgraph,
                             variable_names_allowlist=allowlist, variable_names_denylist=denylist)
            self._pending = []
            for node in self.graph_def.node:  # the selection TensorFlow's session converter makes
                if node.op in VARIABLE_OPS and self._should_convert(node.name):
                    read = node.name + "/Read/ReadVariableOp" if node.op == "VarHandleOp" else node.name
                    self._pending.append((node.name, read + ":0", node.attr["dtype"].type))

        @property
        def tensor_data(self) -> _ReadOnUse:
            return _ReadOnUse(sess, self._pending, c2c._TensorData, release)

    converted, _ = c2c._replace_variables_by_constants(_SessionValues())
    return converted



# --- encoding and decoding -------------------------------------------------------------------

_GRAPH_DEF_NODE_TAG = b"\x0a"  # GraphDef.node is field 1, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def serialized_chunks(graph_def: Any) -> Iterator[bytes]:
    """``graph_def.SerializeToString(deterministic=True)`` in pieces: each node, then the rest.

    Deterministic, so map fields (a node's ``attr``) are written in key order: left to the
    encoder, their order follows a hash, and the same graph could give a different file, and a
    different sha256, from one export to the next. A message's encoding is its fields' encodings
    in field-number order, and a repeated message field is one tag + length + message per
    element; ``node`` is field 1, so its elements come first. Serialized whole, a graph of N bytes of weights needs the message plus two more copies
    (the encoder's buffer and the bytes object) at once; in pieces, the largest node's.
    """
    for node in graph_def.node:
        data = node.SerializeToString(deterministic=True)
        yield _GRAPH_DEF_NODE_TAG + _varint(len(data)) + data
    rest = type(graph_def)()
    for descriptor, value in graph_def.ListFields():
        if descriptor.name == "node":
            continue
        if descriptor.message_type is not None:
            getattr(rest, descriptor.name).CopyFrom(value)
        else:
            setattr(rest, descriptor.name, value)
    yield rest.SerializeToString(deterministic=True)


# Constants of at least this many bytes are fed to the verification run instead of being loaded as
# ``Const`` nodes (see ``_lift_large_constants``).
FED_CONSTANT_BYTES = 1 << 20


def lift_large_constants(graph_def: Any, min_bytes: int) -> dict[str, np.ndarray]:
    """Turn ``graph_def``'s large numeric ``Const`` nodes into placeholders; their values by tensor name.

    Loading a constant into a session copies it several times over (the GraphDef handed to the
    session, the graph it builds, the partitioned graph, the kernel's tensor): measured, a frozen
    graph of N bytes of weights needs about 5N to run once. Fed, each value is one array read
    from the written file's own bytes, and the run still computes with exactly the values the
    file holds, through every other node of it. A constant whose declared dtype, shape and bytes
    do not agree is left as it is, for TensorFlow to judge as a server would.
    """
    tf = import_tensorflow()
    fed: dict[str, np.ndarray] = {}
    for node in graph_def.node:
        if node.op != "Const" or "value" not in node.attr or "dtype" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        if tensor.dtype != node.attr["dtype"].type or tensor.dtype in (7, 20, 21):  # string, resource, variant
            continue
        try:
            dtype = np.dtype(tf.as_dtype(tensor.dtype).as_numpy_dtype)
        except (TypeError, ValueError):
            continue
        if dtype.kind not in "biufc" or tensor.tensor_shape.unknown_rank:
            continue
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize < min_bytes or any(size < 0 for size in shape):
            continue
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            continue
        fed[node.name + ":0"] = np.frombuffer(content, dtype=dtype).reshape(shape)
        node.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
        del tensor, content
        del node.attr["value"]
        node.op = "Placeholder"
    return fed
