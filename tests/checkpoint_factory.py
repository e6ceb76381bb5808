"""Build real TensorFlow checkpoint directories for tests and benchmarks.

Every function writes with TensorFlow itself (tiny variables, so each takes milliseconds once
TensorFlow is imported) and returns the facts a test wants to assert against. TensorFlow is
imported lazily, inside the functions: importing this module costs nothing, so Django-side tests
that only need the dataclasses or file helpers do not pay TensorFlow's import.

TF1 helpers run through ``tf.compat.v1`` inside their own ``tf.Graph().as_default()``, so they
can be called from an eager (TF2) process in any order.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

SEED_VOCABULARY = 8  # bag-of-words size of the seed's toy spam classifier
SEED_CLASSES = 2


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


# --- the seed pattern (TF1 Saver) -------------------------------------------------------------


@dataclass
class SeedRun:
    directory: str
    steps: list[int]
    prefixes: list[str]  # model.ckpt-STEP, oldest first
    latest: str  # what the "checkpoint" state file names
    # The only checkpoint with its own .meta (write_meta_graph on the first save); None when
    # max_to_keep already deleted it.
    meta_prefix: str | None
    variables: dict[str, tuple[int, ...]]  # name -> shape in every model.ckpt-N
    subset_prefixes: list[str]  # subset.ckpt-STEP, saved with Saver({"renamed/w": w})
    subset_latest: str
    subset_state_file: str  # its latest_filename
    subset_variables: dict[str, tuple[int, ...]]
    input_name: str = "x:0"
    output_name: str = "probs:0"
    output_node: str = "probs"


def make_seed_run(
    directory: str | os.PathLike[str],
    steps: tuple[int, ...] = (100, 200, 300, 400),
    *,
    max_to_keep: int | None = 5,
) -> SeedRun:
    """The seed document's training loop: an anti-spam bag-of-words classifier saved with a TF1
    ``Saver`` at ``global_step`` suffixes, ``write_meta_graph`` only on the first save, plus a
    ``var_list`` dict subset (``{"renamed/w": w}``) saved beside it under its own
    ``latest_filename="subset_checkpoint"``. Both savers keep TF1's default absolute paths.

    ``max_to_keep`` is the ``Saver``'s (TensorFlow's default 5): with more steps than that the
    first checkpoint, and with it the only ``.meta``, is deleted, as in the seed's trap.
    """
    tf = _tf()
    import numpy as np

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    features = rng.integers(0, 2, size=(16, SEED_VOCABULARY)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    subset_file = "subset_checkpoint"
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, SEED_VOCABULARY], name="x")
        y = tf.compat.v1.placeholder(tf.int64, [None], name="y")
        w = tf.compat.v1.get_variable("w", [SEED_VOCABULARY, SEED_CLASSES],
                                      initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
        b = tf.compat.v1.get_variable("b", [SEED_CLASSES], initializer=tf.compat.v1.zeros_initializer())
        logits = tf.add(tf.matmul(x, w), b, name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        global_step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.GradientDescentOptimizer(0.5).minimize(loss, global_step=global_step)
        step_value = tf.compat.v1.placeholder(tf.int64, [])
        set_step = global_step.assign(step_value)
        saver = tf.compat.v1.train.Saver(max_to_keep=max_to_keep)
        subset_saver = tf.compat.v1.train.Saver({"renamed/w": w}, max_to_keep=max_to_keep)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for i, step in enumerate(steps):
                sess.run(train, {x: features, y: labels})
                sess.run(set_step, {step_value: step})  # the saved global_step matches the name
                saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step,
                           write_meta_graph=(i == 0))
                subset_saver.save(sess, os.path.join(directory, "subset.ckpt"), global_step=step,
                                  latest_filename=subset_file, write_meta_graph=False)
    steps = list(steps)
    kept = steps[-max_to_keep:] if max_to_keep else steps
    return SeedRun(
        directory=directory,
        steps=kept,
        prefixes=[f"model.ckpt-{s}" for s in kept],
        latest=f"model.ckpt-{steps[-1]}",
        meta_prefix=f"model.ckpt-{steps[0]}" if steps[0] in kept else None,
        variables={"w": (SEED_VOCABULARY, SEED_CLASSES), "b": (SEED_CLASSES,), "global_step": ()},
        subset_prefixes=[f"subset.ckpt-{s}" for s in kept],
        subset_latest=f"subset.ckpt-{steps[-1]}",
        subset_state_file=subset_file,
        subset_variables={"renamed/w": (SEED_VOCABULARY, SEED_CLASSES)},
    )


# --- TF2 object checkpoints ---------------------------------------------------------------------


@dataclass
class ManagerRun:
    directory: str
    steps: list[int]  # the save numbers (ckpt-N)
    prefixes: list[str]  # ckpt-N, oldest first
    latest: str
    timestamps: dict[str, float]  # prefix -> all_model_checkpoint_timestamps entry
    last_preserved_timestamp: float
    variables: dict[str, tuple[int, ...]]  # checkpoint keys (object paths) -> shape


def make_tf2_manager_run(
    directory: str | os.PathLike[str], saves: int = 3, *, max_to_keep: int | None = 5
) -> ManagerRun:
    """``tf.train.Checkpoint`` + ``CheckpointManager``: ``ckpt-N.index/.data``, no ``.meta``, a state
    file with relative paths, ``all_model_checkpoint_timestamps`` and ``last_preserved_timestamp``."""
    tf = _tf()
    directory = os.fspath(directory)

    module = tf.Module()
    module.w = tf.Variable(tf.ones([3, 2]), name="w")
    module.b = tf.Variable(tf.zeros([2]), name="b")
    step = tf.Variable(0, dtype=tf.int64, name="step")
    checkpoint = tf.train.Checkpoint(model=module, step=step)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
    for _ in range(saves):
        step.assign_add(1)
        module.w.assign_add(tf.ones([3, 2]))
        manager.save()
    state = tf.train.get_checkpoint_state(directory)
    prefixes = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    return ManagerRun(
        directory=directory,
        steps=[int(p.rsplit("-", 1)[1]) for p in prefixes],
        prefixes=prefixes,
        latest=os.path.basename(state.model_checkpoint_path),
        timestamps=dict(zip(prefixes, state.all_model_checkpoint_timestamps, strict=True)),
        last_preserved_timestamp=state.last_preserved_timestamp,
        variables={
            "model/w/.ATTRIBUTES/VARIABLE_VALUE": (3, 2),
            "model/b/.ATTRIBUTES/VARIABLE_VALUE": (2,),
            "step/.ATTRIBUTES/VARIABLE_VALUE": (),
            "save_counter/.ATTRIBUTES/VARIABLE_VALUE": (),
        },
    )


# --- a checkpoint with two data shards -------------------------------------------------------


@dataclass
class ShardedCheckpoint:
    directory: str
    prefix: str
    data_files: list[str]  # both shards' base names
    variables: dict[str, tuple[int, ...]]


def make_sharded_checkpoint(directory: str | os.PathLike[str], *, step: int = 7) -> ShardedCheckpoint:
    """A TF1 ``Saver(sharded=True)`` save of variables on two CPU devices: one data shard per device
    (``.data-00000-of-00002`` and ``.data-00001-of-00002``) and one merged ``.index``."""
    tf = _tf()
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with tf.Graph().as_default():
        with tf.device("/cpu:0"):
            tf.compat.v1.get_variable("shard_a", [3])
        with tf.device("/cpu:1"):
            tf.compat.v1.get_variable("shard_b", [5])
        saver = tf.compat.v1.train.Saver(sharded=True)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saved = saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step)
    prefix = os.path.basename(saved)
    data_files = [f"{prefix}.data-00000-of-00002", f"{prefix}.data-00001-of-00002"]
    missing = [name for name in data_files if not os.path.exists(os.path.join(directory, name))]
    if missing:
        raise RuntimeError(f"TensorFlow did not write two shards: {missing} missing in {os.listdir(directory)}")
    return ShardedCheckpoint(directory=directory, prefix=prefix, data_files=data_files,
                             variables={"shard_a": (3,), "shard_b": (5,)})


# --- TensorFlow's old V1 format ---------------------------------------------------------------


@dataclass
class V1Run:
    directory: str
    prefixes: list[str]  # model.ckpt-STEP, oldest first: each one file, no .index
    steps: list[int]
    variables: dict[str, tuple[int, ...]]


def make_v1_run(directory: str | os.PathLike[str], steps: tuple[int, ...] = (10, 20, 30)) -> V1Run:
    """``Saver(write_version=V1)``: one table file per checkpoint named like its prefix, a
    ``.meta`` beside each, and the usual ``checkpoint`` state file (absolute paths)."""
    tf = _tf()
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    prefixes = []
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("dense/kernel", [3, 4])
        tf.compat.v1.get_variable("dense/bias", [4])
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1, max_to_keep=None)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in steps:
                prefixes.append(os.path.basename(saver.save(sess, os.path.join(directory, "model.ckpt"),
                                                            global_step=step)))
    for prefix in prefixes:
        if os.path.exists(os.path.join(directory, prefix + ".index")) or not os.path.isfile(
                os.path.join(directory, prefix)):
            raise RuntimeError(f"TensorFlow did not write the V1 format: {sorted(os.listdir(directory))}")
    return V1Run(directory=directory, prefixes=prefixes, steps=list(steps),
                 variables={"dense/kernel": (3, 4), "dense/bias": (4,)})


# --- many tiny checkpoints, fast --------------------------------------------------------------


@dataclass
class ManyRun:
    directory: str
    prefixes: list[str]  # oldest first
    steps: list[int]
    meta_prefix: str  # the first checkpoint, the only one with a .meta
    variables: dict[str, tuple[int, ...]]
    state_file: str = "checkpoint"


def make_many_tiny_checkpoints(
    directory: str | os.PathLike[str],
    n: int,
    *,
    family: str = "model.ckpt",
    first_step: int = 1,
    step_every: int = 1,
    hardlink: bool = False,
) -> ManyRun:
    """``n`` TF1 checkpoints in seconds, for benchmarks (10,000) and big-history tests (100,000).

    TensorFlow saves one checkpoint (with a ``.meta``, like a first ``Saver.save``); its ``.index``
    and ``.data-00000-of-00001`` are then copied under the other step numbers. The copies are
    byte-identical, which is valid: neither file records its own prefix, so TensorFlow reads every
    copy as a checkpoint of its own (the tests check one). Only the first has a ``.meta``, so
    every other one has it as ``meta_source``. ``hardlink=True`` links instead of copying (faster,
    less disk), but then damaging one file damages them all. One state file lists them all
    (base names, like ``Saver(max_to_keep=None, save_relative_paths=True)``).
    """
    from persistence.statefile import write_state_file

    tf = _tf()
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    steps = [first_step + i * step_every for i in range(n)]
    prefixes = [f"{family}-{s}" for s in steps]
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("w", [2], initializer=tf.compat.v1.ones_initializer())
        saver = tf.compat.v1.train.Saver(max_to_keep=None)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, family), global_step=steps[0], write_state=False)
    template = os.path.join(directory, prefixes[0])
    suffixes = [".index", ".data-00000-of-00001"]
    contents = {suffix: Path(template + suffix).read_bytes() for suffix in suffixes}
    for prefix in prefixes[1:]:
        for suffix in suffixes:
            target = os.path.join(directory, prefix + suffix)
            if hardlink:
                os.link(template + suffix, target)
            else:
                with open(target, "wb") as handle:
                    handle.write(contents[suffix])
    write_state_file(directory, latest=prefixes[-1], all_prefixes=prefixes)
    return ManyRun(directory=directory, prefixes=prefixes, steps=steps, meta_prefix=prefixes[0],
                   variables={"w": (2,)})


# --- damage and moves ---------------------------------------------------------------------------


@dataclass
class MovedRun:
    old_directory: str
    directory: str
    state_files: list[str] = field(default_factory=list)  # names whose paths point to old_directory


def move_run(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> MovedRun:
    """Move a run directory so its state files keep stale absolute paths into ``src``.

    TF1 savers already write absolute paths (``save_relative_paths=False``). Other state files
    (``CheckpointManager``'s relative ones, or a copy's pointing elsewhere) are first rewritten
    with TensorFlow's own ``generate_checkpoint_state_proto`` and absolute ``src`` paths, so that
    the moved directory really holds paths from elsewhere (checked before returning).
    """
    from persistence.statefile import find_state_files, read_state_file

    tf = _tf()
    from google.protobuf import text_format

    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    names = find_state_files(src)
    for name in names:
        state = read_state_file(src, name)
        if state.raw_latest and os.path.dirname(state.raw_latest) == src:
            continue  # already absolute paths into src, as TF1 savers write them
        paths = [os.path.join(src, p) for p in state.all_prefixes]
        stamps = [state.timestamps[p] for p in state.all_prefixes] if state.timestamps else None
        proto = tf.compat.v1.train.generate_checkpoint_state_proto(
            src, os.path.join(src, state.latest), all_model_checkpoint_paths=paths,
            all_model_checkpoint_timestamps=stamps, last_preserved_timestamp=state.last_preserved_timestamp,
        )
        Path(src, name).write_text(text_format.MessageToString(proto))
    shutil.move(src, dst)
    for name in names:
        text = Path(dst, name).read_text()
        if f'"{src}/' not in text:
            raise RuntimeError(f"state file {name} holds no absolute path into {src}:\n{text}")
    return MovedRun(old_directory=src, directory=dst, state_files=names)


def delete_data_shard(prefix_path: str | os.PathLike[str], shard: int = 0) -> str:
    """Delete one ``.data-NNNNN-of-MMMMM`` file of the checkpoint at ``prefix_path``; return its path."""
    prefix_path = os.fspath(prefix_path)
    directory, prefix = os.path.split(prefix_path)
    for name in os.listdir(directory):
        if name.startswith(f"{prefix}.data-{shard:05d}-of-"):
            path = os.path.join(directory, name)
            os.unlink(path)
            return path
    raise FileNotFoundError(f"no data shard {shard} for {prefix_path}")


def truncate_index(prefix_path: str | os.PathLike[str], keep_fraction: float = 0.5) -> str:
    """Cut the checkpoint's ``.index`` to a fraction of its size (a crash mid-copy); return its path."""
    path = os.fspath(prefix_path) + ".index"
    size = os.path.getsize(path)
    os.truncate(path, int(size * keep_fraction))
    return path


GARBAGE_STATE = b'model_checkpoint_path: "model.ckpt-1\n\x00\xff{{ not a checkpoint state'


def write_garbage_state_file(directory: str | os.PathLike[str], name: str = "checkpoint",
                             content: bytes = GARBAGE_STATE) -> str:
    """Overwrite a state file with bytes that do not parse (unterminated string, binary); return its path."""
    path = os.path.join(os.fspath(directory), name)
    Path(path).write_bytes(content)
    return path


def _crc32c(data: bytes) -> int:
    # Bitwise CRC-32C (Castagnoli): only for the few hundred bytes of a hand-made index.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _table_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)  # one restart point at 0


def write_declaring_index(prefix_path: str | os.PathLike[str], *, name: str = "bomb",
                          shape: tuple[int, ...] = (16383, 12000), dtype: int = 7,
                          shard_bytes: bytes = b"\x00" * 8) -> str:
    """A checkpoint whose ``.index`` declares ``name`` with ``shape`` (a string tensor by default)
    while its one data shard holds only ``shard_bytes``: the memory-bomb case, a ~140-byte index.
    """
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.protobuf import tensor_bundle_pb2

    prefix = os.fspath(prefix_path)
    header = tensor_bundle_pb2.BundleHeaderProto(num_shards=1, endianness=tensor_bundle_pb2.BundleHeaderProto.LITTLE)
    header.version.producer = 1
    entry = tensor_bundle_pb2.BundleEntryProto(
        dtype=dtype, shard_id=0, offset=0, size=len(shard_bytes), crc32c=_masked_crc32c(shard_bytes),
        shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]),
    )
    out = bytearray()

    def add_block(block: bytes) -> tuple[int, int]:
        offset = len(out)
        out.extend(block)
        out.extend(b"\x00" + struct.pack("<I", _masked_crc32c(block + b"\x00")))
        return offset, len(block)

    data_handle = add_block(_table_block([(b"", header.SerializeToString()),
                                          (name.encode(), entry.SerializeToString())]))
    meta_handle = add_block(_table_block([]))
    index_handle = add_block(_table_block([(name.encode() + b"\x00",
                                            _varint(data_handle[0]) + _varint(data_handle[1]))]))
    footer = b"".join(_varint(v) for v in (*meta_handle, *index_handle))
    out.extend(footer.ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57))
    with open(prefix + ".index", "wb") as f:
        f.write(out)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(shard_bytes)
    return prefix
