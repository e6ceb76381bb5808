"""Reading a checkpoint's ``.index`` table: its variables (names, shapes, dtypes) and format.

TensorFlow's ``CheckpointReader`` builds its maps from the index alone; data files are opened only
by ``get_tensor``, so describing a checkpoint never reads its data. TensorFlow is imported lazily,
by the first read, so that listing and unchanged rescans never pay for it.
"""

from __future__ import annotations

import os

from persistence import damage, storage
from persistence.bucket_discovery import IndexFetcher
from persistence.listing import OBJECT_GRAPH_KEY, TF1, TF2, VariableInfo


def index_shard_count(index_path: str) -> int | None:
    """``num_shards`` from an ``.index`` file's header, or None if it cannot be seen cheaply.

    Only needed when no data file is left to tell the count. The index is an uncompressed table
    whose first entry, at offset 0, has the empty key and the ``BundleHeaderProto`` as its value:
    bytes ``00 00 LEN`` (shared key bytes, new key bytes, value length; varints), then the proto,
    whose field 1 (tag ``08``) is ``num_shards``.
    """
    try:
        if storage.is_url(index_path):
            head = storage.storage_for(index_path).read_range(index_path, 0, 64)
        else:
            with open(index_path, "rb") as handle:
                head = handle.read(64)
    except OSError:
        return None
    if len(head) < 5 or head[0] != 0 or head[1] != 0 or head[2] >= 0x80 or head[3] != 0x08:
        return None
    count, shift = 0, 0
    for byte in head[4 : 3 + head[2]]:
        count |= (byte & 0x7F) << shift
        if byte < 0x80:
            return count if count > 0 else None
        shift += 7
    return None


class UnreadableIndex(Exception):
    def __init__(self, message: str, *, corrupt: bool):
        super().__init__(message)
        self.corrupt = corrupt  # False: the read failed, but not because of the file's bytes


class IndexReader:
    """Reads variable names, shapes and dtypes from ``.index`` files, importing TensorFlow lazily.

    ``CheckpointReader`` builds its maps from the index (a table of per-tensor entries holding
    dtype, shape, shard, offset, checksum); the data files are only opened by ``get_tensor``. So a
    checkpoint with a missing data shard still lists its variables.
    """

    def __init__(self) -> None:
        self._open = None
        # Index objects in a bucket, fetched ahead and copied where TensorFlow's reader (files
        # only) can open them.
        self._fetcher = IndexFetcher()
        self._open_bytes = False
        self._raw_dtypes = False
        self._dtype_facts: dict[object, tuple[str, int]] = {}
        self._as_dtype = None
        # Checkpoints of one model have the same variables: one list object for all of them (less
        # memory, and callers can recognise equal lists by identity, e.g. to encode them once).
        self._lists: dict[tuple, list[VariableInfo]] = {}

    def load(self) -> None:
        """Import TensorFlow now (it is otherwise imported by the first ``read``)."""
        if self._open is not None:
            return
        from persistence.tfruntime import import_tensorflow

        tf = import_tensorflow()

        # NewCheckpointReader is this class called with the path's UTF-8 bytes, plus a translation
        # of RuntimeError into OpError with the same message (all we keep). Calling it directly
        # saves a tenth of the reading time; fall back to the public call if it goes away.
        try:
            from tensorflow.python.util._pywrap_checkpoint_reader import CheckpointReader

            self._open, self._open_bytes = CheckpointReader, True
        except ImportError:
            self._open, self._open_bytes = tf.compat.v1.train.NewCheckpointReader, False
        self._as_dtype = tf.dtypes.as_dtype
        # The public get_variable_to_dtype_map() wraps every enum in a new DType object; on
        # 10,000 one-variable checkpoints that is a third of the reading time. The enum map
        # underneath it has existed since TF 2.2; fall back to the public call if it goes away.
        try:
            from tensorflow.python.training import py_checkpoint_reader

            self._raw_dtypes = hasattr(py_checkpoint_reader.CheckpointReader, "_GetVariableToDataTypeMap")
        except ImportError:
            self._raw_dtypes = False

    def prefetch(self, index_urls: list[str]) -> None:
        """Start fetching these ``.index`` objects from their bucket for the ``read`` calls that follow."""
        self._fetcher.prefetch(index_urls)

    def read(self, path_prefix: str) -> tuple[str, list[VariableInfo]]:
        if self._open is None:
            self.load()
        if storage.is_url(path_prefix):
            try:
                local = self._fetcher.local_copy(path_prefix)
            except OSError as exc:
                # The object could not be fetched: nothing is known about its bytes.
                raise UnreadableIndex(str(exc), corrupt=False) from None
            try:
                return self._read(local)
            except UnreadableIndex as exc:
                # Name the object, not the private copy, in what is recorded.
                raise UnreadableIndex(str(exc).replace(local, path_prefix), corrupt=exc.corrupt) from None
            finally:
                os.unlink(local + ".index")
        return self._read(path_prefix)

    def _read(self, path_prefix: str) -> tuple[str, list[VariableInfo]]:
        try:
            reader = self._open(path_prefix.encode("utf-8") if self._open_bytes else path_prefix)
            shapes = reader.get_variable_to_shape_map()
            if self._raw_dtypes:
                dtypes = reader._GetVariableToDataTypeMap()  # noqa: SLF001 - see load
            else:
                dtypes = reader.get_variable_to_dtype_map()
        except Exception as exc:  # TensorFlow raises OpError subclasses, or ValueError for bad bytes
            raise UnreadableIndex(reader_message(exc), corrupt=damage.classify(exc).corrupt) from exc
        fmt = TF2 if OBJECT_GRAPH_KEY in shapes else TF1
        names = sorted(shapes)
        if fmt == TF2:
            names.remove(OBJECT_GRAPH_KEY)
        key = tuple([(name, tuple(shapes[name]), dtypes[name]) for name in names])
        variables = self._lists.get(key)
        if variables is None:
            variables = self._lists[key] = [self._variable(name, shape, dtype) for name, shape, dtype in key]
        return fmt, variables

    def _variable(self, name: str, shape: tuple[int, ...], dtype: object) -> VariableInfo:
        fact = self._dtype_facts.get(dtype)
        if fact is None:
            fact = self._dtype_facts[dtype] = self._facts(dtype)
        count = 1
        for dim in shape:
            count *= dim
        return VariableInfo(name, shape, fact[0], count * fact[1])

    def _facts(self, dtype: object) -> tuple[str, int]:
        dtype = self._as_dtype(dtype)
        # Strings, resources and variants have no fixed size per element.
        size = 0 if dtype.name in ("string", "resource", "variant") else dtype.size
        return dtype.name, size


def reader_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(message.split())
