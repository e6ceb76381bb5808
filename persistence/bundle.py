"""Read a V2 checkpoint's ``PREFIX.index`` ourselves, and check what it declares against the shards.

The index is a LevelDB-format table of ``BundleEntryProto`` (one per tensor: dtype, shape, shard,
offset, size). TensorFlow allocates a tensor from its declared shape *before* reading its bytes, so
a 138-byte index that declares a [16383, 12000] string tensor makes ``get_tensor`` allocate
gigabytes before it notices the shard is far too short. :func:`declared_size_problem` checks every
entry against the size of its shard first: a tensor cannot be larger than the shard that holds it.

Like every ``persistence`` module this imports neither Django nor (at module level) TensorFlow.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic

# DataType enums without a fixed width: strings need at least one byte (their length varint) per
# element in the shard; resources and variants are not stored as plain bytes.
_DT_STRING = 7
_DT_UNSIZED = frozenset({20, 21})  # resource, variant


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A protobuf/LevelDB base-128 varint at ``pos``: (value, position after it)."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _table_block(data: bytes, offset: int, size: int) -> Iterator[tuple[bytes, bytes]]:
    """Entries of one uncompressed LevelDB-format block (TensorFlow's ``table`` format)."""
    if data[offset + size] != 0:  # 0 = kNoCompression; TF's bundle writer never compresses
        raise ValueError("compressed index block")
    block = data[offset : offset + size]
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (num_restarts + 1)
    pos, key = 0, b""
    while pos < end:
        shared, pos = varint(block, pos)
        non_shared, pos = varint(block, pos)
        value_len, pos = varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


@dataclass
class BundleIndex:
    header: Any  # BundleHeaderProto
    entries: dict[str, bytes]  # tensor name -> serialized BundleEntryProto

    def shard_path(self, prefix: str, shard_id: int) -> str:
        return f"{prefix}.data-{shard_id:05d}-of-{self.header.num_shards:05d}"


def read_index(prefix: str) -> BundleIndex | None:
    """The header and raw entries of ``PREFIX.index``; None when it is not a table we can read."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    try:
        with open(prefix + ".index", "rb") as f:
            data = f.read()
        if len(data) < _FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
            return None
        footer = data[len(data) - _FOOTER_BYTES :]
        _meta_offset, pos = varint(footer, 0)
        _meta_size, pos = varint(footer, pos)
        index_offset, pos = varint(footer, pos)
        index_size, pos = varint(footer, pos)
        header = None
        entries: dict[str, bytes] = {}
        for _, handle in _table_block(data, index_offset, index_size):
            block_offset, hpos = varint(handle, 0)
            block_size, _ = varint(handle, hpos)
            for key, value in _table_block(data, block_offset, block_size):
                if key == b"":
                    header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                else:
                    entries[key.decode("utf-8", "replace")] = value
    except (OSError, ValueError, IndexError, struct.error):
        return None
    except Exception:  # noqa: BLE001 - a protobuf DecodeError of the header
        return None
    if header is None:
        return None
    return BundleIndex(header=header, entries=entries)


def _itemsize(dtype: int) -> int | None:
    import tensorflow as tf

    try:
        return tf.as_dtype(dtype).size
    except (TypeError, ValueError):
        return None


def declared_size_problem(prefix: str) -> str | None:
    """Why the index declares more than its shards can hold (a message), or None when it does not.

    Checked per tensor before anything is read: the bytes it records must lie inside its shard,
    and its declared shape must fit in them (fixed-width dtypes: elements x itemsize; strings: at
    least one byte per element). An index we cannot parse, a missing shard or a partitioned
    tensor is left to TensorFlow, which reports those without a large allocation.
    """
    from tensorflow.core.protobuf import tensor_bundle_pb2

    index = read_index(prefix)
    if index is None:
        return None
    shard_sizes: dict[int, int | None] = {}
    for name, value in index.entries.items():
        try:
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        except Exception:  # noqa: BLE001 - a DecodeError: TensorFlow says what is wrong with it
            continue
        if entry.slices:
            continue
        if entry.shard_id not in shard_sizes:
            try:
                shard_sizes[entry.shard_id] = os.path.getsize(index.shard_path(prefix, entry.shard_id))
            except OSError:
                shard_sizes[entry.shard_id] = None
        shard_size = shard_sizes[entry.shard_id]
        if shard_size is None:
            continue
        shard = os.path.basename(index.shard_path(prefix, entry.shard_id))
        dims = [d.size for d in entry.shape.dim]
        if any(d < 0 for d in dims):
            return f"tensor {name!r} declares a negative dimension {dims}"
        elements = math.prod(dims)
        if entry.dtype == _DT_STRING:
            needed = elements  # one length byte per string at the very least
        elif entry.dtype in _DT_UNSIZED or (itemsize := _itemsize(entry.dtype)) is None:
            continue
        else:
            needed = elements * itemsize
        if needed > shard_size:
            return (f"tensor {name!r} declares shape {dims} ({needed} bytes or more) but its shard "
                    f"{shard} has {shard_size} bytes")
        if entry.offset + entry.size > shard_size:
            return (f"tensor {name!r} declares {entry.size} bytes at offset {entry.offset} but its shard "
                    f"{shard} has {shard_size} bytes")
    return None
