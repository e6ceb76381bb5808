"""Save jobs: train a recipe and write TF1 checkpoints with exactly the Saver options the seed describes.

The worker that runs save jobs calls :func:`train` with callbacks and records every checkpoint the
moment ``on_saved`` reports it, so the dashboard never waits for the next scan to show a save job's
output. Nothing here knows about Django, RQ or the database: callbacks in, dataclasses out.

TensorFlow's Saver writes every file and keeps its own ``max_to_keep`` window. Left alone it
deletes whatever falls out of that window: with ``write_meta_graph`` only on the first save, the
first checkpoint's ``.meta`` goes with its index and data, leaving every later checkpoint without a
meta graph, and a continued run loses checkpoints an earlier trainer wrote. A caller that must not
lose some checkpoints passes a ``rotation_guard``: before each save it is asked about the checkpoint
the Saver is about to rotate out, and a checkpoint it vouches for is taken out of the Saver's window
(as TensorFlow itself does with one kept by ``keep_checkpoint_every_n_hours``), so the Saver never
deletes it and the state file simply stops listing it. Either way :func:`train` reports exactly
which files the Saver removed (``deleted`` / ``deleted_files``) and which it was kept from removing
(``kept_from_rotation``).

TensorFlow is imported lazily inside the functions: the web process imports this module for its
dataclasses and must not pay for TensorFlow.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .files import TEMP_MARKER, fsync_directory
from .recipes import Recipe

WRITE_META_ALWAYS = "always"
WRITE_META_FIRST = "first"  # the seed's write_meta_graph=False after the first save
WRITE_META_NEVER = "never"  # for continuing a run whose directory already holds a .meta
WRITE_META_CHOICES = (WRITE_META_ALWAYS, WRITE_META_FIRST, WRITE_META_NEVER)

DEFAULT_STATE_FILE = "checkpoint"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

_STEP_SUFFIX = re.compile(r"-(\d+)$")
# TF1 optimizers name their slots "<variable>/<optimizer name>[_N]"; Adam also keeps two scalar
# accumulators at the top level. These are the default optimizer names of tf.compat.v1.train.
_TF1_SLOT = re.compile(
    r"/(Adam|Momentum|RMSProp|Adagrad|AdagradDA|Adadelta|Ftrl|ProximalAdagrad|"
    r"ProximalGradientDescent|Nadam|Adamax)(_\d+)?$"
)
_TF1_OPTIMIZER_SCALAR = re.compile(r"^(beta1_power|beta2_power)(_\d+)?$")
# Training bookkeeping that is not the model: the step counter, TF2's save counter, and the
# optimizer state of a TF2 object checkpoint (under "optimizer/" or marked as a slot).
_TRAINING_COUNTER = re.compile(r"^(global_step|save_counter(/\.ATTRIBUTES/VARIABLE_VALUE)?)$")
_TF2_OPTIMIZER_KEY = re.compile(r"(^optimizer/|/\.OPTIMIZER_SLOT/)")


def is_training_state(name: str) -> bool:
    """True for a checkpoint variable that holds optimizer or training state, not model weights.

    By name alone (no TensorFlow, so the web process can filter comparisons with it): TF1 slot
    names (``<var>/Adam``, ``<var>/Adam_1``, ``<var>/Momentum``, …), ``beta1_power`` /
    ``beta2_power``, ``global_step``, and TF2 optimizer keys and ``save_counter``.
    """
    return bool(
        _TF1_SLOT.search(name) or _TF1_OPTIMIZER_SCALAR.match(name)
        or _TRAINING_COUNTER.match(name) or _TF2_OPTIMIZER_KEY.search(name)
    )


RotationGuard = Callable[[str], str | None]
"""Asked with the prefix the Saver's ``max_to_keep`` is about to delete; answers why it must stay, or None."""


class TrainingError(ValueError):
    """Bad arguments or a checkpoint that cannot be used; the message says what and why."""


class TrainingCancelled(Exception):
    """``should_stop()`` asked to stop. Checkpoints already written stay and are in ``result``."""

    def __init__(self, step: int, result: TrainResult) -> None:
        super().__init__(f"training cancelled at global step {step}")
        self.step = step
        self.result = result


@dataclass
class SaverOptions:
    """The ``tf.compat.v1.train.Saver`` / ``Saver.save`` options a save job exposes.

    ``var_list``: None saves every global variable; a list of variable names saves that subset;
    a dict ``{name_in_file: variable_name}`` saves a subset under new names (the seed's rename).
    """

    prefix: str = "model.ckpt"
    max_to_keep: int | None = 5  # 0 or None keeps every checkpoint on disk
    keep_checkpoint_every_n_hours: float = 10000.0  # TensorFlow's default
    write_meta_graph: str = WRITE_META_ALWAYS
    var_list: list[str] | dict[str, str] | None = None
    latest_filename: str | None = None  # None = "checkpoint"
    # TensorFlow's Saver default writes absolute paths into the state file; relative paths make a
    # run directory movable. Kept False to match the seed unless a job asks otherwise.
    save_relative_paths: bool = False

    def __post_init__(self) -> None:
        if (
            not isinstance(self.prefix, str)
            or not self.prefix
            or os.path.basename(self.prefix) != self.prefix
        ):
            raise TrainingError(f"prefix must be a plain file name without directories, got {self.prefix!r}")
        if self.prefix in (".", ".."):
            raise TrainingError(f"prefix {self.prefix!r} is not a file name")
        if self.max_to_keep is not None and (
            isinstance(self.max_to_keep, bool)
            or not isinstance(self.max_to_keep, int)
            or self.max_to_keep < 0
        ):
            raise TrainingError(f"max_to_keep must be None or an integer >= 0, got {self.max_to_keep!r}")
        if not isinstance(self.keep_checkpoint_every_n_hours, int | float) or not (
            self.keep_checkpoint_every_n_hours > 0
        ):
            raise TrainingError(
                f"keep_checkpoint_every_n_hours must be > 0, got {self.keep_checkpoint_every_n_hours!r}"
            )
        if self.write_meta_graph not in WRITE_META_CHOICES:
            raise TrainingError(
                f"write_meta_graph must be one of {', '.join(WRITE_META_CHOICES)}, got {self.write_meta_graph!r}"
            )
        if self.latest_filename is not None and (
            not self.latest_filename or os.path.basename(self.latest_filename) != self.latest_filename
        ):
            raise TrainingError(f"latest_filename must be a plain file name, got {self.latest_filename!r}")
        if self.var_list is not None and not isinstance(self.var_list, list | tuple | dict):
            raise TrainingError("var_list must be None, a list of variable names or a dict new_name -> name")
        if isinstance(self.var_list, tuple):
            self.var_list = list(self.var_list)

    @property
    def state_file(self) -> str:
        return self.latest_filename or DEFAULT_STATE_FILE

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for a job's params."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SaverOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingError(f"unknown saver options: {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass
class SavedCheckpoint:
    prefix: str  # base name, e.g. "model.ckpt-100"
    path: str  # absolute prefix path, what Saver.restore takes
    step: int | None
    metrics: dict[str, float]  # held-out "loss" and "accuracy", plus "train_loss" for training saves
    files: list[str]  # base names this save wrote (index, data shards, .meta when written)
    deleted: list[str] = field(default_factory=list)  # prefixes the Saver's max_to_keep removed
    deleted_files: list[str] = field(default_factory=list)  # their files that disappeared (.meta too)
    has_meta: bool = False  # this save wrote PREFIX.meta
    meta_source: str | None = None  # prefix whose .meta restores this one (None: unknown)
    state_file: str | None = None  # the state file this save updated (None: untouched)
    saved_at: float = 0.0  # POSIX seconds: the .index mtime (TF1 state files carry no timestamps)
    size_bytes: int = 0  # sum of ``files``
    variables: list[str] = field(default_factory=list)  # names as stored in the file
    # prefix -> reason, for checkpoints the rotation guard kept out of this save's max_to_keep rotation
    kept_from_rotation: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    directory: str
    recipe: str
    start_step: int  # global step before the first training step
    final_step: int
    steps_run: int
    checkpoints: list[SavedCheckpoint]
    initial_metrics: dict[str, float]  # held-out metrics before training (after restore)
    final_metrics: dict[str, float]
    state_file: str
    restored_from: str | None = None
    restored_variables: list[str] = field(default_factory=list)  # graph names loaded from restore_from
    initialized_variables: list[str] = field(default_factory=list)  # graph names that started fresh
    elapsed_seconds: float = 0.0

    @property
    def latest(self) -> SavedCheckpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def deleted(self) -> list[str]:
        return [prefix for saved in self.checkpoints for prefix in saved.deleted]


def _import_tf() -> Any:
    from persistence.tfruntime import import_tensorflow

    return import_tensorflow()


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TrainingError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _normalise_name(name: str) -> str:
    # Users copy names from tensor listings ("hidden/kernel:0"); checkpoints key by op name.
    return name[:-2] if name.endswith(":0") else name


def _unknown_names_error(what: str, unknown: Iterable[str], valid: Iterable[str]) -> TrainingError:
    return TrainingError(
        f"unknown {what}: {', '.join(sorted(unknown))}. Valid names: {', '.join(sorted(valid))}"
    )


def step_from_prefix(prefix: str) -> int | None:
    """The ``global_step`` suffix of a checkpoint prefix ("model.ckpt-1000" -> 1000), else None."""
    match = _STEP_SUFFIX.search(os.path.basename(prefix))
    return int(match.group(1)) if match else None


def checkpoint_files(directory: str, prefix: str) -> list[str]:
    """Base names of the files that exist for ``prefix`` in ``directory``: index, data shards, meta."""
    base = os.path.join(glob.escape(directory), glob.escape(prefix))
    names = []
    for pattern in (".index", ".data-*-of-*", ".meta"):
        names.extend(sorted(os.path.basename(p) for p in glob.glob(base + pattern)))
    return names


def _resolve_var_list(tf: Any, var_list: list[str] | dict[str, str] | None) -> dict[str, Any]:
    """``{name_in_checkpoint: variable}`` for the Saver; unknown names raise listing the valid ones."""
    variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    if var_list is None:
        return dict(variables)
    if isinstance(var_list, dict):
        wanted = {str(new): _normalise_name(str(old)) for new, old in var_list.items()}
        if any(not new for new in wanted):
            raise TrainingError("var_list: new names must not be empty")
        unknown = {old for old in wanted.values() if old not in variables}
        if unknown:
            raise _unknown_names_error("variable names in var_list", unknown, variables)
        return {new: variables[old] for new, old in wanted.items()}
    names = [_normalise_name(str(n)) for n in var_list]
    unknown = {n for n in names if n not in variables}
    if unknown:
        raise _unknown_names_error("variable names in var_list", unknown, variables)
    if not names:
        raise TrainingError("var_list is empty: there would be nothing to save")
    return {n: variables[n] for n in names}


def _evaluate(sess: Any, handles: Any, feed: dict[Any, np.ndarray]) -> dict[str, float]:
    fetches = {"loss": handles.loss, **handles.metrics}
    return {k: float(v) for k, v in sess.run(fetches, feed).items()}


def _feed(handles: Any, inputs: Mapping[str, np.ndarray], labels: np.ndarray, rows: Any = None) -> dict:
    feed = {}
    for name, tensor in handles.inputs.items():
        feed[tensor] = inputs[name] if rows is None else inputs[name][rows]
    feed[handles.labels] = labels if rows is None else labels[rows]
    return feed


def _resolve_restore_path(tf: Any, restore_from: str) -> str:
    path = os.fspath(restore_from)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise TrainingError(f"restore_from: no checkpoint state in directory {path}")
        return latest
    return path


def _plan_restore(
    tf: Any, restore_path: str, saved_names: dict[str, Any]
) -> tuple[Any, list[str], list[str]]:
    """A Saver loading every graph variable that ``restore_path`` holds, and (restored, fresh) names.

    A variable is looked up under the name this job saves it as (a var_list rename) and then under
    its graph name, so a run can continue from its own renamed checkpoints and from plain ones.
    Variables the checkpoint lacks (e.g. Adam slots dropped by :func:`resave_subset`) keep their
    fresh initial values, as in a partial restore for fine-tuning.
    """
    try:
        reader = tf.train.load_checkpoint(restore_path)
    except (tf.errors.OpError, ValueError) as exc:
        raise TrainingError(f"restore_from {restore_path}: cannot read checkpoint: {exc}") from exc
    shapes = reader.get_variable_to_shape_map()
    saved_as = {v.op.name: key for key, v in saved_names.items()}
    to_restore: dict[str, Any] = {}
    restored, fresh = [], []
    for variable in tf.compat.v1.global_variables():
        name = variable.op.name
        for key in (saved_as.get(name), name):
            if key is not None and key in shapes:
                if list(shapes[key]) != variable.shape.as_list():
                    raise TrainingError(
                        f"restore_from: {key} has shape {list(shapes[key])} in the checkpoint "
                        f"but {variable.shape.as_list()} in the graph"
                    )
                to_restore[key] = variable
                restored.append(name)
                break
        else:
            fresh.append(name)
    if not to_restore:
        raise TrainingError(
            f"restore_from {restore_path}: none of the graph's variables are in the checkpoint "
            f"(checkpoint holds: {', '.join(sorted(shapes)) or 'nothing'})"
        )
    return tf.compat.v1.train.Saver(var_list=to_restore), restored, fresh


def _recover_saver_state(tf: Any, saver: Any, directory: str, state_file: str) -> None:
    """Let ``max_to_keep`` see the checkpoints an earlier job left, as TF's SessionManager does.

    Without this, a second job in the same directory would rewrite the state file listing only its
    own checkpoints, and the earlier ones would silently fall out of TensorFlow's bookkeeping.
    """
    try:
        state = tf.train.get_checkpoint_state(directory, latest_filename=state_file)
    except ValueError:
        return  # an empty or invalid state file: nothing to recover, Saver.save will rewrite it
    if state is None:
        return
    # A moved directory's state file names another machine's paths: resolve by base name here.
    paths = [os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths]
    saver.recover_last_checkpoints([p for p in paths if os.path.exists(p + ".index")])


def planned_save_steps(start_step: int, steps: int, save_every: int) -> list[int]:
    """The global steps :func:`train` saves at: multiples of ``save_every``, and the last step."""
    planned = [s for s in range(start_step + 1, start_step + steps + 1) if s % save_every == 0]
    if not planned or planned[-1] != start_step + steps:
        planned.append(start_step + steps)
    return planned


def preview_rotation(
    listed: Iterable[str],
    planned: Iterable[str],
    max_to_keep: int | None,
    must_stay: Callable[[str], bool] = lambda prefix: False,
) -> list[str]:
    """The prefixes the Saver's ``max_to_keep`` would delete over a whole job, in order.

    ``listed`` are the prefixes the state file lists (what the Saver's window starts with),
    ``planned`` the prefixes the job will write, ``must_stay`` what a rotation guard would keep.
    Mirrors :func:`train`: the window drops its front while it is full and the front must stay,
    then the Saver pops one checkpoint per save. ``keep_checkpoint_every_n_hours`` is left out:
    it can only keep more.
    """
    if not max_to_keep:
        return []
    window, rotated = list(dict.fromkeys(listed)), []
    for new in planned:
        window = [p for p in window if p != new]
        while window and len(window) + 1 > max_to_keep and must_stay(window[0]):
            window.pop(0)
        window.append(new)
        if len(window) > max_to_keep:
            rotated.append(window.pop(0))
    return rotated


def _keep_out_of_rotation(saver: Any, new_path: str, max_to_keep: int, guard: RotationGuard) -> dict[str, str]:
    """Take the checkpoints ``guard`` vouches for out of the Saver's window before it rotates.

    ``Saver.save`` appends ``new_path`` to its window and, when the window is then over
    ``max_to_keep``, deletes the oldest entry. Only that entry is ever at risk in one save, so
    only it is asked about; while the one asked about must stay it leaves the window and the next
    oldest is asked. The window is put back with ``recover_last_checkpoints`` (public API; the
    times come from the files, as when TensorFlow recovers a crashed trainer).
    """
    window = list(saver.last_checkpoints)
    pending = [p for p in window if p != new_path]
    kept: dict[str, str] = {}
    while pending and len(pending) + 1 > max_to_keep:
        reason = guard(os.path.basename(pending[0]))
        if reason is None:
            break
        kept[os.path.basename(pending.pop(0))] = reason
    if kept:
        saver.recover_last_checkpoints([p for p in window if os.path.basename(p) not in kept])
    return kept


def _keeping_meta_source(guard: RotationGuard, meta_source: str, new_prefix: str) -> RotationGuard:
    # The checkpoint about to be written restores with meta_source's .meta, and no record says so
    # yet: the caller's guard cannot know it, so it is kept here.
    def keeping(prefix: str) -> str | None:
        return f".meta needed by {new_prefix}" if prefix == meta_source else guard(prefix)

    return keeping


def _refuse_overwrite(directory: str, prefix: str, start_step: int, steps: int, save_every: int,
                      elsewhere: Collection[str] = ()) -> None:
    planned = planned_save_steps(start_step, steps, save_every)
    clashes = [
        f"{prefix}-{s}" for s in planned
        if f"{prefix}-{s}" in elsewhere or os.path.exists(os.path.join(directory, f"{prefix}-{s}.index"))
    ]
    if clashes:
        raise TrainingError(
            f"{directory} already holds {', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}; "
            "restore from the latest checkpoint to continue, use another prefix or directory, or overwrite"
        )


def _size(directory: str, names: Iterable[str]) -> int:
    total = 0
    for name in names:
        try:
            total += os.path.getsize(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    return total


def train(
    directory: str,
    recipe: Recipe,
    *,
    steps: int,
    save_every: int,
    options: SaverOptions | None = None,
    restore_from: str | None = None,
    seed: int = 0,
    on_saved: Callable[[SavedCheckpoint], None] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    rotation_guard: RotationGuard | None = None,
    existing_prefixes: Collection[str] = (),
) -> TrainResult:
    """Train ``recipe`` for ``steps`` steps in a fresh graph, saving into ``directory``.

    Saves happen whenever the global step is a multiple of ``save_every`` and after the last step,
    with ``saver.save(sess, directory/prefix, global_step=step, ...)``. ``restore_from`` (a
    checkpoint prefix, or a directory meaning its latest checkpoint) continues training: the global
    step goes on from the restored value. ``on_progress(done, steps, loss)`` is called about every
    1 % of the steps and after each save; ``should_stop()`` is checked before every step and stops
    with :class:`TrainingCancelled` (no extra save). A checkpoint that would be written over an
    existing one of the same name is refused before training starts unless ``overwrite`` is true:
    the dashboard has already recorded the old one's contents. ``rotation_guard`` (see the module
    docstring) keeps checkpoints out of the Saver's ``max_to_keep`` deletions; without it the
    Saver rotates exactly as TensorFlow does. ``existing_prefixes`` are checkpoints that exist where
    the files end up when that is not ``directory`` (a bucket they are uploaded to): writing over
    one is refused like writing over a file.
    """
    steps = _check_positive_int("steps", steps)
    save_every = _check_positive_int("save_every", save_every)
    options = options or SaverOptions()
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    state_file = options.state_file
    started = time.monotonic()

    tf = _import_tf()
    v1 = tf.compat.v1
    dataset = recipe.make_data(seed=seed)
    with tf.Graph().as_default() as graph:
        # Graph-level seed: the same seed gives the same initial weights, hence comparable runs.
        v1.set_random_seed(seed)
        handles = recipe.build_graph()
        saved_names = _resolve_var_list(tf, options.var_list)
        saver = v1.train.Saver(
            var_list=saved_names,
            # TF's Saver treats 0 and None alike ("keep all"), but the proto field needs an int.
            max_to_keep=options.max_to_keep or 0,
            keep_checkpoint_every_n_hours=options.keep_checkpoint_every_n_hours,
            save_relative_paths=options.save_relative_paths,
        )
        init = v1.global_variables_initializer()
        restored_from = None
        restore_saver, restored, fresh = None, [], []
        if restore_from is not None:
            restored_from = _resolve_restore_path(tf, restore_from)
            restore_saver, restored, fresh = _plan_restore(tf, restored_from, saved_names)
        set_step = None
        if restore_saver is not None and handles.global_step.op.name in fresh:
            # A subset checkpoint without the counter: its file name still says the step. (Only
            # built when needed: every extra op lands in the .meta and in freeze's suggestions.)
            step_value = v1.placeholder(tf.int64, [], name="restored_global_step")
            set_step = handles.global_step.assign(step_value)
        graph.finalize()  # nothing below may add ops: a growing graph would slow every save

        with v1.Session(graph=graph) as sess:
            sess.run(init)
            if restore_saver is not None:
                restore_saver.restore(sess, restored_from)
                suffix = step_from_prefix(restored_from)
                if set_step is not None and suffix is not None:
                    sess.run(set_step, {step_value: suffix})
            if options.max_to_keep:
                _recover_saver_state(tf, saver, directory, state_file)

            eval_feed = _feed(handles, dataset.eval_inputs, dataset.eval_labels)
            start_step = int(sess.run(handles.global_step))
            if not overwrite:
                _refuse_overwrite(directory, options.prefix, start_step, steps, save_every, existing_prefixes)
            initial_metrics = _evaluate(sess, handles, eval_feed)
            result = TrainResult(
                directory=directory,
                recipe=recipe.name,
                start_step=start_step,
                final_step=start_step,
                steps_run=0,
                checkpoints=[],
                initial_metrics=initial_metrics,
                final_metrics=dict(initial_metrics),
                state_file=state_file,
                restored_from=restored_from,
                restored_variables=restored,
                initialized_variables=fresh,
            )

            rng = np.random.default_rng(seed)
            n_train = dataset.train_size
            batch = min(recipe.batch_size, n_train)
            order = rng.permutation(n_train)
            cursor = 0
            progress_every = max(1, steps // 100)
            meta_source: str | None = None
            loss = float("nan")
            for done in range(1, steps + 1):
                if should_stop is not None and should_stop():
                    result.elapsed_seconds = time.monotonic() - started
                    raise TrainingCancelled(result.final_step, result)
                if cursor + batch > n_train:  # a new epoch: reshuffle, like a tf.data shuffle
                    order, cursor = rng.permutation(n_train), 0
                rows = order[cursor : cursor + batch]
                cursor += batch
                _, loss = sess.run(
                    [handles.train_op, handles.loss],
                    _feed(handles, dataset.train_inputs, dataset.train_labels, rows),
                )
                loss = float(loss)
                expected_step = start_step + done
                result.final_step, result.steps_run = expected_step, done

                if expected_step % save_every == 0 or done == steps:
                    step = int(sess.run(handles.global_step))
                    if step != expected_step:
                        raise TrainingError(
                            f"recipe {recipe.name}: global_step is {step} after {done} steps from "
                            f"{start_step}; its train_op must increment global_step"
                        )
                    write_meta = options.write_meta_graph == WRITE_META_ALWAYS or (
                        options.write_meta_graph == WRITE_META_FIRST and not result.checkpoints
                    )
                    metrics = _evaluate(sess, handles, eval_feed)
                    metrics["train_loss"] = loss
                    guard = rotation_guard
                    if rotation_guard is not None and not write_meta and meta_source is not None:
                        guard = _keeping_meta_source(rotation_guard, meta_source, f"{options.prefix}-{step}")
                    saved = _save(
                        saver, sess, directory, options, step, write_meta, metrics, sorted(saved_names), guard
                    )
                    if saved.has_meta:
                        meta_source = saved.prefix
                    saved.meta_source = meta_source
                    result.checkpoints.append(saved)
                    result.final_metrics = {k: v for k, v in metrics.items() if k != "train_loss"}
                    if on_saved is not None:
                        on_saved(saved)
                    if on_progress is not None:
                        on_progress(done, steps, loss)
                elif on_progress is not None and (done % progress_every == 0):
                    on_progress(done, steps, loss)

    result.elapsed_seconds = time.monotonic() - started
    return result


def _save(
    saver: Any,
    sess: Any,
    directory: str,
    options: SaverOptions,
    step: int,
    write_meta: bool,
    metrics: dict[str, float],
    variable_names: list[str],
    rotation_guard: RotationGuard | None = None,
) -> SavedCheckpoint:
    target = os.path.join(directory, options.prefix)
    kept: dict[str, str] = {}
    if rotation_guard is not None and options.max_to_keep:
        kept = _keep_out_of_rotation(saver, f"{target}-{step}", options.max_to_keep, rotation_guard)
    # The Saver drops at most the oldest entry of its window per save; remember what those
    # candidates had on disk so that `deleted` names exactly what disappeared (a checkpoint kept by
    # keep_checkpoint_every_n_hours leaves the window but keeps its files).
    before_window = list(saver.last_checkpoints)
    before_files = {p: checkpoint_files(directory, os.path.basename(p)) for p in before_window}
    path = saver.save(
        sess,
        target,
        global_step=step,
        write_meta_graph=write_meta,
        latest_filename=options.state_file,
    )
    prefix = os.path.basename(path)
    after_window = set(saver.last_checkpoints)
    deleted, deleted_files = [], []
    for candidate in before_window:
        if candidate in after_window:
            continue
        base = os.path.basename(candidate)
        gone = [n for n in before_files[candidate] if not os.path.exists(os.path.join(directory, n))]
        deleted_files.extend(gone)
        if not os.path.exists(os.path.join(directory, base + ".index")):
            deleted.append(base)
    files = [n for n in checkpoint_files(directory, prefix) if write_meta or not n.endswith(".meta")]
    index_path = os.path.join(directory, prefix + ".index")
    return SavedCheckpoint(
        prefix=prefix,
        path=os.path.join(directory, prefix),
        step=step,
        metrics=metrics,
        files=files,
        deleted=deleted,
        deleted_files=deleted_files,
        has_meta=write_meta,
        state_file=options.state_file,
        saved_at=os.path.getmtime(index_path),
        size_bytes=_size(directory, files),
        variables=variable_names,
        kept_from_rotation=kept,
    )


def _tf2_optimizer_keys(tf: Any, reader: Any) -> set[str]:
    """Checkpoint keys of optimizer state in a TF2 object checkpoint, found through its object graph.

    Slot variables of tf.compat.v1 / Keras 2 optimizers are listed as ``slot_variables`` (their keys
    contain ``/.OPTIMIZER_SLOT/``). Keras 3 optimizers instead track their moments in ``_variables``
    and also hold references to the model's weights in ``_trainable_variables``, so "everything
    under the optimizer" would wrongly include the model: a node counts as model state when it is
    reachable without passing through an optimizer, or through the optimizer's
    ``_trainable_variables``.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    nodes = graph.nodes

    def is_optimizer(node: Any) -> bool:
        children = {c.local_name for c in node.children}
        return bool(node.slot_variables) or {"_iterations", "_variables"} <= children

    optimizers = {i for i, node in enumerate(nodes) if is_optimizer(node)}
    slot_nodes = {sv.slot_variable_node_id for node in nodes for sv in node.slot_variables}

    def reach(starts: Iterable[int], blocked: set[int]) -> set[int]:
        seen, stack = set(), [s for s in starts if s not in blocked]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(c.node_id for c in nodes[i].children if c.node_id not in blocked)
        return seen

    model_nodes = reach([0], optimizers) if nodes else set()
    for i in optimizers:
        model_nodes |= reach(
            [c.node_id for c in nodes[i].children if c.local_name == "_trainable_variables"], optimizers
        )
    optimizer_nodes = (
        reach([c.node_id for i in optimizers for c in nodes[i].children], set()) | optimizers | slot_nodes
    )
    keys = {
        a.checkpoint_key for i in (optimizer_nodes - model_nodes) | slot_nodes for a in nodes[i].attributes
    }
    return keys


def optimizer_slot_names(source_prefix_path: str) -> set[str]:
    """Names in a checkpoint that hold optimizer state rather than model weights.

    TF1: Adam's ``<var>/Adam``, ``<var>/Adam_1``, ``beta1_power``, ``beta2_power`` and the slot
    names of the other tf.compat.v1.train optimizers. TF2 object checkpoints: see
    :func:`_tf2_optimizer_keys`.
    """
    tf = _import_tf()
    reader = tf.train.load_checkpoint(source_prefix_path)
    return _optimizer_slot_names(tf, reader)


def _optimizer_slot_names(tf: Any, reader: Any) -> set[str]:
    names = set(reader.get_variable_to_shape_map())
    if OBJECT_GRAPH_KEY in names:
        return _tf2_optimizer_keys(tf, reader) & names
    return {n for n in names if _TF1_SLOT.search(n) or _TF1_OPTIMIZER_SCALAR.match(n)}


def resave_subset(
    source_prefix_path: str,
    directory: str,
    new_prefix: str,
    *,
    variables: Iterable[str] | None = None,
    drop_optimizer_slots: bool = False,
    rename: Mapping[str, str] | None = None,
) -> SavedCheckpoint:
    """Write a new TF1 checkpoint holding some of ``source``'s variables, without any training.

    ``variables``: names to keep (None = all). ``drop_optimizer_slots`` then removes optimizer
    state from that selection. ``rename`` maps ``{source_name: name_in_new_file}`` (note: the
    opposite direction of a Saver's dict ``var_list``, because here the source names are what the
    user sees). The directory's state files are never touched: the Saver runs with
    ``write_state=False`` into a private temporary directory inside ``directory`` and the files are
    moved into place data first, ``.index`` last, so discovery (which keys on ``.index``) never sees
    a half-written checkpoint. No ``.meta`` is written: the source's meta graph would expect the
    dropped variables, so the result is restored into a recipe's graph by name (a partial restore).
    Resaving a TF2 object checkpoint yields a name-based TF1 checkpoint without the object graph.
    """
    tf = _import_tf()
    v1 = tf.compat.v1
    source = os.fspath(source_prefix_path)
    directory = os.path.abspath(os.fspath(directory))
    if not new_prefix or os.path.basename(new_prefix) != new_prefix or new_prefix in (".", ".."):
        raise TrainingError(f"new_prefix must be a plain file name, got {new_prefix!r}")
    if new_prefix == DEFAULT_STATE_FILE:
        raise TrainingError("new_prefix must not be the state file's name")
    if not os.path.isdir(directory):
        raise TrainingError(f"directory {directory} does not exist")
    existing = checkpoint_files(directory, new_prefix)
    if existing:
        raise TrainingError(f"{new_prefix} already exists in {directory} ({', '.join(existing)})")
    try:
        reader = tf.train.load_checkpoint(source)
    except (tf.errors.OpError, ValueError) as exc:
        raise TrainingError(f"cannot read checkpoint {source}: {exc}") from exc

    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    available = sorted(n for n in shapes if n != OBJECT_GRAPH_KEY)
    if variables is None:
        selected = list(available)
    else:
        selected = list(dict.fromkeys(_normalise_name(str(n)) for n in variables))
        unknown = [n for n in selected if n not in shapes or n == OBJECT_GRAPH_KEY]
        if unknown:
            raise _unknown_names_error(f"variables in {os.path.basename(source)}", unknown, available)
    if drop_optimizer_slots:
        slots = _optimizer_slot_names(tf, reader)
        selected = [n for n in selected if n not in slots]
    if not selected:
        raise TrainingError("no variables left to save")

    rename = {_normalise_name(str(k)): str(v) for k, v in (rename or {}).items()}
    not_kept = [k for k in rename if k not in selected]
    if not_kept:
        raise _unknown_names_error("variables in rename (not in the new checkpoint)", not_kept, selected)
    if any(not v for v in rename.values()):
        raise TrainingError("rename: new names must not be empty")
    new_names = {name: rename.get(name, name) for name in selected}
    clashes = sorted({n for n in new_names.values() if list(new_names.values()).count(n) > 1})
    if clashes:
        raise TrainingError(f"rename: several variables would be saved as {', '.join(clashes)}")

    step = step_from_prefix(new_prefix)
    work = tempfile.mkdtemp(prefix=f".{new_prefix}{TEMP_MARKER}", dir=directory)
    try:
        with tf.Graph().as_default() as graph:
            holders, var_list = {}, {}
            for i, name in enumerate(selected):
                # Values arrive through placeholders, not constants: constants would copy every
                # array into the GraphDef and a big checkpoint would hit protobuf's 2 GB limit.
                holder = v1.placeholder(dtypes[name], shape=shapes[name], name=f"value_{i}")
                variable = v1.Variable(holder, name=f"var_{i}", trainable=False)
                holders[name] = (holder, variable)
                var_list[new_names[name]] = variable
            saver = v1.train.Saver(var_list=var_list, max_to_keep=None)
            graph.finalize()
            with v1.Session(graph=graph) as sess:
                for name, (holder, variable) in holders.items():
                    sess.run(variable.initializer, {holder: reader.get_tensor(name)})
                saver.save(sess, os.path.join(work, new_prefix), write_meta_graph=False, write_state=False)
        if step is None and "global_step" in selected:
            step = int(reader.get_tensor("global_step"))
        written = checkpoint_files(work, new_prefix)
        index_name = new_prefix + ".index"
        for name in [n for n in written if n != index_name] + [index_name]:
            os.replace(os.path.join(work, name), os.path.join(directory, name))
        fsync_directory(directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return SavedCheckpoint(
        prefix=new_prefix,
        path=os.path.join(directory, new_prefix),
        step=step,
        metrics={},
        files=written,
        has_meta=False,
        meta_source=None,
        state_file=None,
        saved_at=os.path.getmtime(os.path.join(directory, index_name)),
        size_bytes=_size(directory, written),
        variables=sorted(new_names.values()),
    )


def make_demo_run(directory: str, steps: int = 300, save_every: int = 25, seed: int = 0) -> TrainResult:
    """First-start demo content: the anti-spam recipe saved the way the seed describes.

    ``max_to_keep=None`` keeps every checkpoint; only the first save writes a ``.meta`` (the seed's
    ``write_meta_graph=False`` for later saves), so later checkpoints restore with the first meta.
    """
    from .recipes.antispam import AntiSpamRecipe

    options = SaverOptions(max_to_keep=None, write_meta_graph=WRITE_META_FIRST)
    return train(directory, AntiSpamRecipe(), steps=steps, save_every=save_every, options=options, seed=seed)


__all__ = [
    "SavedCheckpoint",
    "RotationGuard",
    "SaverOptions",
    "TrainResult",
    "TrainingCancelled",
    "TrainingError",
    "checkpoint_files",
    "make_demo_run",
    "optimizer_slot_names",
    "planned_save_steps",
    "preview_rotation",
    "resave_subset",
    "step_from_prefix",
    "train",
]
