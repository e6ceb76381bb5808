"""TensorBoard event files written by real TensorFlow writers, and what TensorFlow reads back.

``expected_scalars`` is the reference every test compares with: ``tf.compat.v1.train.summary_iterator``
over the file, with TF2 tensor summaries decoded by ``tf.make_ndarray``.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Mapping

import numpy as np

from tests.checkpoint_factory import _tf

Points = Mapping[str, Iterable[tuple[int, float]]]
# Writers name files by the second they start in: a suffix keeps two started in one second apart
# and in the order they were written.
_SUFFIXES = itertools.count()


def write_tf1_events(logdir: str | os.PathLike[str], points: Points) -> str:
    """``tf.compat.v1.summary.FileWriter`` with ``Summary.Value.simple_value``, one event per step
    holding every tag logged at that step (what a TF1 ``merge_all`` summary op gives)."""
    tf = _tf()
    by_step: dict[int, list[tuple[str, float]]] = {}
    for tag, pairs in points.items():
        for step, value in pairs:
            by_step.setdefault(step, []).append((tag, value))
    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(os.fspath(logdir), filename_suffix=f".{next(_SUFFIXES):05d}")
        for step in sorted(by_step):
            summary = tf.compat.v1.Summary(
                value=[tf.compat.v1.Summary.Value(tag=tag, simple_value=value) for tag, value in by_step[step]]
            )
            writer.add_summary(summary, global_step=step)
        writer.close()
    return newest_event_file(logdir)


def write_tf2_events(logdir: str | os.PathLike[str], points: Points, *, histogram: bool = False) -> str:
    """``tf.summary.create_file_writer`` + ``tf.summary.scalar`` (tensor summaries, plugin "scalars";
    the plugin is named in the first event of each tag only). ``histogram``: also a histogram per
    step, which must not be taken for a scalar."""
    tf = _tf()
    writer = tf.summary.create_file_writer(os.fspath(logdir), filename_suffix=f".{next(_SUFFIXES):05d}")
    with writer.as_default():
        for tag, pairs in points.items():
            for step, value in pairs:
                tf.summary.scalar(tag, value, step=step)
                if histogram:
                    tf.summary.histogram(f"{tag}_hist", [value, value * 2], step=step)
    writer.flush()
    writer.close()
    return newest_event_file(logdir)


def keras_fit_with_checkpoints(run_dir: str | os.PathLike[str], epochs: int = 3) -> None:
    """A tiny Keras model fit with the TensorBoard callback (``train/``, ``validation/``), saving a
    TF2 checkpoint (``ckpt-EPOCH``, ``CheckpointManager``) at the end of each epoch, so that the
    checkpoints' steps are the epochs the callback logs at."""
    tf = _tf()
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    epoch = tf.Variable(0, dtype=tf.int64)
    kernel = tf.Variable(np.zeros((4, 1), "float32"), name="kernel")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(epoch=epoch, kernel=kernel), os.fspath(run_dir),
                                         max_to_keep=None)

    class SaveEachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            epoch.assign(index)
            kernel.assign(np.asarray(model.layers[0].kernel))
            manager.save(checkpoint_number=index)

    model.fit(x, y, validation_data=(x[:16], y[:16]), epochs=epochs, batch_size=16, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(log_dir=os.fspath(run_dir)), SaveEachEpoch()])


def newest_event_file(logdir: str | os.PathLike[str]) -> str:
    return max(glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*")), key=os.path.getmtime)


def expected_scalars(path: str | os.PathLike[str], prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """What TensorFlow's own ``summary_iterator`` reads: scalar values by tag, in file order."""
    tf = _tf()
    out: dict[str, list[tuple[int, float]]] = {}
    scalar_tags: set[str] = set()
    for event in tf.compat.v1.train.summary_iterator(os.fspath(path)):
        for value in event.summary.value:
            if value.HasField("metadata") and value.metadata.plugin_data.plugin_name == "scalars":
                scalar_tags.add(value.tag)
            if value.HasField("simple_value"):
                number = value.simple_value
            elif value.HasField("tensor") and value.tag in scalar_tags:
                number = tf.make_ndarray(value.tensor).item()
            else:
                continue
            out.setdefault(prefix + value.tag, []).append((event.step, float(number)))
    return out


def record_offsets(path: str | os.PathLike[str]) -> list[int]:
    """Where each record of a TFRecord file starts (and, last, its size), by TensorFlow's reader."""
    _tf()
    from tensorflow.python.lib.io import tf_record

    reader = tf_record.tf_record_random_reader(os.fspath(path))
    offsets = [0]
    while True:
        try:
            _, end = reader.read(offsets[-1])
        except IndexError:
            break
        offsets.append(end)
    return offsets
