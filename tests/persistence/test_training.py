"""Save jobs: training with the seed's Saver options, checkpoint reporting, and subset re-saves."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from persistence.recipes.antispam import AntiSpamRecipe
from persistence.training import (
    SavedCheckpoint,
    SaverOptions,
    TrainingCancelled,
    TrainingError,
    make_demo_run,
    optimizer_slot_names,
    planned_save_steps,
    preview_rotation,
    resave_subset,
    train,
)

pytestmark = pytest.mark.tf

MODEL_VARIABLES = {"hidden/kernel", "hidden/bias", "output/kernel", "output/bias", "global_step"}


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def demo_style_run(tmp_path_factory):
    """300 steps, a save every 25, keep all, .meta on the first save only (the seed's setup)."""
    directory = tmp_path_factory.mktemp("demo")
    saved: list[SavedCheckpoint] = []
    progress: list[tuple[int, int, float]] = []
    result = train(
        str(directory),
        AntiSpamRecipe(),
        steps=300,
        save_every=25,
        options=SaverOptions(max_to_keep=None, write_meta_graph="first"),
        on_saved=saved.append,
        on_progress=lambda step, total, loss: progress.append((step, total, loss)),
    )
    return directory, result, saved, progress


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 50-step run with every default option; a source for restore and resave tests."""
    directory = tmp_path_factory.mktemp("short")
    result = train(str(directory), AntiSpamRecipe(), steps=50, save_every=25)
    return directory, result


def _names(tf, path: str) -> set[str]:
    return {name for name, _ in tf.train.list_variables(path)}


def _indexes(directory) -> list[str]:
    return sorted(n[: -len(".index")] for n in os.listdir(directory) if n.endswith(".index"))


def _metas(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".meta"))


# --- train: what lands on disk and what is reported ---------------------------------------------


def test_every_save_is_reported_once_with_increasing_steps(demo_style_run):
    _, result, saved, _ = demo_style_run
    assert [s.step for s in saved] == list(range(25, 301, 25))
    assert [s.prefix for s in saved] == [f"model.ckpt-{step}" for step in range(25, 301, 25)]
    assert saved == result.checkpoints
    assert result.start_step == 0 and result.final_step == 300 and result.steps_run == 300


def test_reported_files_agree_with_tensorflow(demo_style_run, tf):
    directory, _, saved, _ = demo_style_run
    state = tf.train.get_checkpoint_state(str(directory))
    assert state.model_checkpoint_path == saved[-1].path
    assert tf.train.latest_checkpoint(str(directory)) == saved[-1].path
    assert _indexes(directory) == sorted(s.prefix for s in saved)
    for checkpoint in saved:
        assert checkpoint.path == os.path.join(str(directory), checkpoint.prefix)
        assert set(checkpoint.files) == {
            f"{checkpoint.prefix}.index",
            f"{checkpoint.prefix}.data-00000-of-00001",
            *([f"{checkpoint.prefix}.meta"] if checkpoint.has_meta else []),
        }
        assert checkpoint.size_bytes == sum(os.path.getsize(directory / f) for f in checkpoint.files)
        assert _names(tf, checkpoint.path) == set(checkpoint.variables)
        assert tf.train.load_checkpoint(checkpoint.path).get_tensor("global_step") == checkpoint.step
        assert checkpoint.deleted == [] and checkpoint.state_file == "checkpoint"


def test_keep_all_state_file_lists_only_the_latest(demo_style_run, tf):
    # TensorFlow's Saver keeps no window when max_to_keep is None/0, so its state file names only
    # the newest checkpoint although all twelve stay on disk: discovery must not trust that list.
    directory, _, saved, _ = demo_style_run
    state = tf.train.get_checkpoint_state(str(directory))
    assert list(state.all_model_checkpoint_paths) == [saved[-1].path]
    assert len(_indexes(directory)) == 12


def test_saved_checkpoint_holds_weights_and_adam_slots(demo_style_run, tf):
    _, _, saved, _ = demo_style_run
    names = _names(tf, saved[0].path)
    assert MODEL_VARIABLES <= names
    assert {"hidden/kernel/Adam", "hidden/kernel/Adam_1", "beta1_power", "beta2_power"} <= names


def test_metrics_are_sane_and_accuracy_improves(demo_style_run):
    _, result, saved, _ = demo_style_run
    for checkpoint in saved:
        assert 0.0 <= checkpoint.metrics["accuracy"] <= 1.0
        assert math.isfinite(checkpoint.metrics["loss"]) and checkpoint.metrics["loss"] > 0
        assert math.isfinite(checkpoint.metrics["train_loss"])
    assert saved[0].metrics["accuracy"] < 1.0
    assert saved[-1].metrics["accuracy"] > saved[0].metrics["accuracy"] + 0.1
    assert saved[-1].metrics["loss"] < saved[0].metrics["loss"]
    assert result.final_metrics["accuracy"] > result.initial_metrics["accuracy"]
    assert result.final_metrics["accuracy"] == saved[-1].metrics["accuracy"]


def test_write_meta_first_writes_only_the_first_meta(demo_style_run):
    directory, _, saved, _ = demo_style_run
    assert _metas(directory) == ["model.ckpt-25.meta"]
    assert [s.has_meta for s in saved] == [True] + [False] * 11
    assert {s.meta_source for s in saved} == {"model.ckpt-25"}


def test_progress_is_reported_in_order_up_to_the_total(demo_style_run):
    _, _, _, progress = demo_style_run
    steps = [step for step, _, _ in progress]
    assert steps == sorted(steps) and steps[-1] == 300
    assert {total for _, total, _ in progress} == {300}
    assert 12 <= len(progress) <= 320


def test_save_happens_at_the_last_step_off_the_schedule(tmp_path):
    result = train(str(tmp_path), AntiSpamRecipe(), steps=30, save_every=25)
    assert [c.step for c in result.checkpoints] == [25, 30]


def test_max_to_keep_keeps_the_newest_and_reports_deleted(tmp_path, tf):
    saved: list[SavedCheckpoint] = []
    train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=150,
        save_every=25,
        options=SaverOptions(max_to_keep=3),
        on_saved=saved.append,
    )
    assert [s.deleted for s in saved] == [[], [], [], ["model.ckpt-25"], ["model.ckpt-50"], ["model.ckpt-75"]]
    assert saved[3].deleted_files == [
        "model.ckpt-25.index",
        "model.ckpt-25.data-00000-of-00001",
        "model.ckpt-25.meta",
    ]
    assert _indexes(tmp_path) == ["model.ckpt-100", "model.ckpt-125", "model.ckpt-150"]
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == _indexes(tmp_path)


def test_max_to_keep_deletes_the_only_meta_when_written_first_only(tmp_path):
    # The seed's trap, reproduced on purpose: TF removes model.ckpt-25.meta with model.ckpt-25.
    saved: list[SavedCheckpoint] = []
    train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=100,
        save_every=25,
        options=SaverOptions(max_to_keep=3, write_meta_graph="first"),
        on_saved=saved.append,
    )
    assert "model.ckpt-25.meta" in saved[3].deleted_files
    assert _metas(tmp_path) == []
    assert saved[-1].meta_source == "model.ckpt-25"  # what it would restore with, now gone


def test_checkpoints_kept_by_hours_are_not_reported_deleted(tmp_path):
    # A tiny keep_checkpoint_every_n_hours makes TF keep every checkpoint that leaves the window.
    saved: list[SavedCheckpoint] = []
    train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=100,
        save_every=25,
        options=SaverOptions(max_to_keep=2, keep_checkpoint_every_n_hours=1e-9),
        on_saved=saved.append,
    )
    assert [s.deleted for s in saved] == [[], [], [], []]
    assert len(_indexes(tmp_path)) == 4


def test_latest_filename_names_the_state_file(tmp_path, tf):
    result = train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=25,
        save_every=25,
        options=SaverOptions(latest_filename="antispam_state", prefix="spam.ckpt"),
    )
    assert not (tmp_path / "checkpoint").exists()
    state = tf.train.get_checkpoint_state(str(tmp_path), latest_filename="antispam_state")
    assert state.model_checkpoint_path == result.latest.path
    assert result.latest.prefix == "spam.ckpt-25" and result.latest.state_file == "antispam_state"


# --- var_list ------------------------------------------------------------------------------------


def test_var_list_subset_saves_only_the_listed_variables(tmp_path, tf):
    result = train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=25,
        save_every=25,
        options=SaverOptions(var_list=["hidden/kernel", "output/bias:0", "global_step"]),
    )
    assert _names(tf, result.latest.path) == {"hidden/kernel", "output/bias", "global_step"}
    assert set(result.latest.variables) == {"hidden/kernel", "output/bias", "global_step"}


def test_var_list_dict_renames_variables_in_the_file(tmp_path, tf):
    result = train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=25,
        save_every=25,
        options=SaverOptions(
            var_list={"spam/w1": "hidden/kernel", "spam/b1": "hidden/bias", "step": "global_step"}
        ),
    )
    assert _names(tf, result.latest.path) == {"spam/w1", "spam/b1", "step"}
    reader = tf.train.load_checkpoint(result.latest.path)
    assert reader.get_tensor("spam/w1").shape == (512, 32)
    assert reader.get_tensor("step") == 25


def test_unknown_var_list_names_are_listed_with_the_valid_ones(tmp_path):
    with pytest.raises(TrainingError) as caught:
        train(
            str(tmp_path),
            AntiSpamRecipe(),
            steps=5,
            save_every=5,
            options=SaverOptions(var_list={"a": "hidden/kernal", "b": "nope"}),
        )
    message = str(caught.value)
    assert "hidden/kernal" in message and "nope" in message
    assert "hidden/kernel" in message  # the valid names, so the user can fix the typo
    assert _indexes(tmp_path) == []


# --- restore, cancel, validation ----------------------------------------------------------------


def test_restore_from_continues_the_global_step(short_run, tmp_path, tf):
    _, first = short_run
    saved: list[SavedCheckpoint] = []
    result = train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=30,
        save_every=25,
        restore_from=first.latest.path,
        on_saved=saved.append,
    )
    assert result.start_step == 50 and result.final_step == 80
    assert [s.step for s in saved] == [75, 80]
    assert tf.train.load_checkpoint(saved[-1].path).get_tensor("global_step") == 80
    # The weights really came back: held-out metrics before training match the source's last save.
    assert result.initial_metrics["loss"] == pytest.approx(first.final_metrics["loss"], rel=1e-6)
    assert result.initialized_variables == []


def test_restore_from_a_directory_uses_its_latest_checkpoint(short_run, tmp_path):
    source_dir, first = short_run
    result = train(str(tmp_path), AntiSpamRecipe(), steps=5, save_every=5, restore_from=str(source_dir))
    assert result.restored_from == first.latest.path and result.final_step == 55


def test_continuing_in_the_same_directory_applies_max_to_keep_to_earlier_checkpoints(tmp_path, tf):
    options = SaverOptions(max_to_keep=3)
    first = train(str(tmp_path), AntiSpamRecipe(), steps=75, save_every=25, options=options)
    second = train(
        str(tmp_path),
        AntiSpamRecipe(),
        steps=50,
        save_every=25,
        options=options,
        restore_from=first.latest.path,
    )
    assert second.deleted == ["model.ckpt-25", "model.ckpt-50"]
    assert _indexes(tmp_path) == ["model.ckpt-100", "model.ckpt-125", "model.ckpt-75"]
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert len(state.all_model_checkpoint_paths) == 3


def test_restore_from_a_slimmed_checkpoint_takes_the_step_from_its_name(short_run, tmp_path):
    _, first = short_run
    slim = resave_subset(
        first.latest.path,
        str(tmp_path),
        "slim-50",
        variables=["hidden/kernel", "hidden/bias", "output/kernel", "output/bias"],
    )
    result = train(str(tmp_path / "next"), AntiSpamRecipe(), steps=5, save_every=5, restore_from=slim.path)
    assert result.start_step == 50 and result.final_step == 55
    assert "global_step" in result.initialized_variables
    assert "hidden/kernel/Adam" in result.initialized_variables
    assert "hidden/kernel" in result.restored_variables


def test_restore_from_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        train(str(tmp_path), AntiSpamRecipe(), steps=5, save_every=5, restore_from=str(tmp_path / "nope-5"))


def test_should_stop_cancels_and_keeps_what_was_saved(tmp_path):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 60  # stop before step 61

    saved: list[SavedCheckpoint] = []
    with pytest.raises(TrainingCancelled) as caught:
        train(
            str(tmp_path),
            AntiSpamRecipe(),
            steps=300,
            save_every=25,
            should_stop=should_stop,
            on_saved=saved.append,
        )
    assert caught.value.step == 60
    assert [c.step for c in caught.value.result.checkpoints] == [25, 50] == [s.step for s in saved]
    assert _indexes(tmp_path) == ["model.ckpt-25", "model.ckpt-50"]


@pytest.mark.parametrize(("steps", "save_every"), [(0, 5), (5, 0), (-1, 5), (2.5, 1), (True, 1)])
def test_steps_and_save_every_must_be_positive_integers(tmp_path, steps, save_every):
    with pytest.raises(TrainingError):
        train(str(tmp_path), AntiSpamRecipe(), steps=steps, save_every=save_every)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"write_meta_graph": "sometimes"},
        {"prefix": "sub/model.ckpt"},
        {"prefix": ""},
        {"max_to_keep": -1},
        {"keep_checkpoint_every_n_hours": 0},
        {"latest_filename": "../checkpoint"},
        {"var_list": "hidden/kernel"},
    ],
)
def test_saver_options_reject_bad_values(kwargs):
    with pytest.raises(TrainingError):
        SaverOptions(**kwargs)


def test_saver_options_round_trip_through_a_dict():
    options = SaverOptions(max_to_keep=None, write_meta_graph="first", var_list={"w": "hidden/kernel"})
    assert SaverOptions.from_dict(options.to_dict()) == options
    with pytest.raises(TrainingError, match="bogus"):
        SaverOptions.from_dict({"bogus": 1})


def test_make_demo_run_keeps_all_with_one_meta(tmp_path, tf):
    result = make_demo_run(str(tmp_path), steps=60, save_every=20)
    assert [c.prefix for c in result.checkpoints] == ["model.ckpt-20", "model.ckpt-40", "model.ckpt-60"]
    assert _metas(tmp_path) == ["model.ckpt-20.meta"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == result.latest.path


# --- resave_subset -------------------------------------------------------------------------------


def test_resave_without_optimizer_slots_keeps_weights_exactly(short_run, tmp_path, tf):
    source_dir, first = short_run
    source = first.latest.path
    state_before = (source_dir / "checkpoint").read_bytes()
    state_mtime = (source_dir / "checkpoint").stat().st_mtime_ns
    before = set(os.listdir(source_dir))

    slim = resave_subset(source, str(source_dir), "model.ckpt-50-slim", drop_optimizer_slots=True)

    new_names = _names(tf, slim.path)
    assert new_names == MODEL_VARIABLES == set(slim.variables)
    src, new = tf.train.load_checkpoint(source), tf.train.load_checkpoint(slim.path)
    for name in new_names:
        assert np.array_equal(src.get_tensor(name), new.get_tensor(name)), name
    assert src.get_variable_to_dtype_map()["global_step"] == new.get_variable_to_dtype_map()["global_step"]
    assert slim.size_bytes < first.latest.size_bytes / 2  # Adam's m and v are two extra copies
    assert (source_dir / "checkpoint").read_bytes() == state_before
    assert (source_dir / "checkpoint").stat().st_mtime_ns == state_mtime
    added = set(os.listdir(source_dir)) - before
    assert added == set(slim.files) == {"model.ckpt-50-slim.index", "model.ckpt-50-slim.data-00000-of-00001"}
    assert slim.step == 50 and slim.state_file is None and not slim.has_meta


def test_resave_subset_with_rename_stores_new_names(short_run, tmp_path, tf):
    _, first = short_run
    out = resave_subset(
        first.latest.path,
        str(tmp_path),
        "encoder",
        variables=["hidden/kernel", "hidden/bias"],
        rename={"hidden/kernel": "encoder/w"},
    )
    assert _names(tf, out.path) == {"encoder/w", "hidden/bias"}
    src, new = tf.train.load_checkpoint(first.latest.path), tf.train.load_checkpoint(out.path)
    assert np.array_equal(src.get_tensor("hidden/kernel"), new.get_tensor("encoder/w"))
    assert out.step is None
    assert not (tmp_path / "checkpoint").exists()


def test_resave_unknown_names_are_listed(short_run, tmp_path):
    _, first = short_run
    with pytest.raises(TrainingError) as caught:
        resave_subset(first.latest.path, str(tmp_path), "x", variables=["hidden/kernel", "hiden/bias"])
    assert "hiden/bias" in str(caught.value) and "output/kernel" in str(caught.value)
    with pytest.raises(TrainingError, match="not-there"):
        resave_subset(first.latest.path, str(tmp_path), "x", rename={"not-there": "y"})
    assert os.listdir(tmp_path) == []  # nothing written, no temporary directory left behind


def test_resave_refuses_to_overwrite_an_existing_checkpoint(short_run):
    source_dir, first = short_run
    with pytest.raises(TrainingError, match="already exists"):
        resave_subset(first.latest.path, str(source_dir), "model.ckpt-25")


def test_resave_rejects_renames_that_collide(short_run, tmp_path):
    _, first = short_run
    with pytest.raises(TrainingError, match="hidden/bias"):
        resave_subset(first.latest.path, str(tmp_path), "x", rename={"hidden/kernel": "hidden/bias"})


def test_optimizer_slots_of_tf1_adam_are_recognised(short_run):
    _, first = short_run
    slots = optimizer_slot_names(first.latest.path)
    assert slots == {
        f"{v}/{s}"
        for v in ("hidden/kernel", "hidden/bias", "output/kernel", "output/bias")
        for s in ("Adam", "Adam_1")
    } | {"beta1_power", "beta2_power"}


def test_optimizer_slots_of_a_tf2_object_checkpoint_are_recognised(tmp_path, tf):
    module = AntiSpamRecipe().build_tf2_module()
    optimizer = tf.compat.v1.train.AdamOptimizer()
    x = AntiSpamRecipe().sample_input()["x"]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module.serve(x)["probs"][:, 1])
    variables = [module.hidden.kernel, module.output.kernel]
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    prefix = tf.train.Checkpoint(model=module, optimizer=optimizer).save(str(tmp_path / "tf2" / "ckpt"))

    slots = optimizer_slot_names(prefix)
    assert "model/hidden/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE" in slots
    assert "optimizer/beta1_power/.ATTRIBUTES/VARIABLE_VALUE" in slots
    assert not any(".OPTIMIZER_SLOT" not in s and s.startswith("model/") for s in slots)

    slim = resave_subset(prefix, str(tmp_path), "tf2-slim", drop_optimizer_slots=True)
    assert set(slim.variables) == {
        "model/hidden/kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "model/hidden/bias/.ATTRIBUTES/VARIABLE_VALUE",
        "model/output/kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "model/output/bias/.ATTRIBUTES/VARIABLE_VALUE",
        "model/global_step/.ATTRIBUTES/VARIABLE_VALUE",
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
    }


def test_keras3_optimizer_state_is_dropped_but_model_weights_stay(tmp_path, tf):
    # Keras 3 tracks the model's weights under the optimizer too ("_trainable_variables"); only
    # its own variables (iterations, learning rate, moments) are optimizer state.
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    optimizer = keras.optimizers.Adam()
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0, epochs=1)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "k3" / "ckpt"))
    kernel = next(n for n, shape in tf.train.list_variables(prefix) if shape == [4, 3] and "_trainable" in n)

    slim = resave_subset(prefix, str(tmp_path), "k3-slim", drop_optimizer_slots=True)

    assert kernel in slim.variables
    assert len([n for n in slim.variables if "_trainable_variables" in n]) == 2  # kernel and bias
    assert not any(
        "_iterations" in n or "_variables/" in n.replace("_trainable_variables/", "") for n in slim.variables
    )
    src, new = tf.train.load_checkpoint(prefix), tf.train.load_checkpoint(slim.path)
    assert np.array_equal(src.get_tensor(kernel), new.get_tensor(kernel))


def test_training_refuses_to_overwrite_existing_checkpoints(short_run):
    source_dir, first = short_run
    mtime = os.path.getmtime(first.latest.path + ".index")
    with pytest.raises(TrainingError, match="model.ckpt-25, model.ckpt-50"):
        train(str(source_dir), AntiSpamRecipe(), steps=50, save_every=25)
    assert os.path.getmtime(first.latest.path + ".index") == mtime


def test_overwrite_replaces_checkpoints_of_the_same_name(tmp_path, tf):
    train(str(tmp_path), AntiSpamRecipe(), steps=25, save_every=25, seed=1)
    before = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-25")).get_tensor("hidden/kernel")
    train(str(tmp_path), AntiSpamRecipe(), steps=25, save_every=25, seed=2, overwrite=True)
    after = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-25")).get_tensor("hidden/kernel")
    assert not np.array_equal(before, after)


# --- rotation guard: what max_to_keep may delete ----------------------------------------------


def test_rotation_guard_keeps_vouched_checkpoints_and_tensorflow_agrees(tmp_path, tf):
    asked: list[str] = []

    def guard(prefix: str) -> str | None:
        asked.append(prefix)
        return "pinned" if prefix == "model.ckpt-50" else None

    saved: list[SavedCheckpoint] = []
    train(
        str(tmp_path), AntiSpamRecipe(), steps=150, save_every=25, options=SaverOptions(max_to_keep=2),
        on_saved=saved.append, rotation_guard=guard,
    )
    assert asked == ["model.ckpt-25", "model.ckpt-50", "model.ckpt-75", "model.ckpt-100"]
    assert [s.deleted for s in saved] == [[], [], ["model.ckpt-25"], [], ["model.ckpt-75"], ["model.ckpt-100"]]
    assert saved[3].kept_from_rotation == {"model.ckpt-50": "pinned"}
    assert _indexes(tmp_path) == ["model.ckpt-125", "model.ckpt-150", "model.ckpt-50"]
    assert _metas(tmp_path) == ["model.ckpt-125.meta", "model.ckpt-150.meta", "model.ckpt-50.meta"]
    # The kept checkpoint left the Saver's window: the state file lists only what is on disk.
    state = tf.train.get_checkpoint_state(str(tmp_path))
    listed = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    assert listed == ["model.ckpt-125", "model.ckpt-150"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-150")
    assert tf.train.load_checkpoint(str(tmp_path / "model.ckpt-50")).get_tensor("global_step") == 50


def test_rotation_guard_keeps_the_only_meta_and_earlier_checkpoints(tmp_path, tf):
    # The seed's trap again, now with a guard that keeps the meta source and what it did not write.
    first = train(str(tmp_path), AntiSpamRecipe(), steps=50, save_every=25, options=SaverOptions(max_to_keep=3))
    mine: set[str] = set()
    options = SaverOptions(max_to_keep=2, write_meta_graph="first")

    def guard(prefix: str) -> str | None:
        if prefix not in mine:
            return "written before this job"
        return "meta graph source" if prefix == "model.ckpt-75" else None

    saved: list[SavedCheckpoint] = []

    def on_saved(checkpoint: SavedCheckpoint) -> None:
        mine.add(checkpoint.prefix)
        saved.append(checkpoint)

    # Every save is asked about before it happens: the first one's own prefix is already "mine".
    mine.add("model.ckpt-75")
    train(str(tmp_path), AntiSpamRecipe(), steps=100, save_every=25, options=options,
          restore_from=first.latest.path, on_saved=on_saved, rotation_guard=guard)
    assert [s.deleted for s in saved] == [[], [], [], ["model.ckpt-100"]]
    assert _indexes(tmp_path) == ["model.ckpt-125", "model.ckpt-150", "model.ckpt-25", "model.ckpt-50",
                                  "model.ckpt-75"]
    assert _metas(tmp_path) == ["model.ckpt-25.meta", "model.ckpt-50.meta", "model.ckpt-75.meta"]
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)
    assert tf.train.latest_checkpoint(str(tmp_path)) == saved[-1].path


def test_preview_rotation_matches_what_train_deletes(tmp_path):
    listed = ["model.ckpt-25", "model.ckpt-50"]
    planned = [f"model.ckpt-{s}" for s in planned_save_steps(50, 100, 25)]
    assert planned == ["model.ckpt-75", "model.ckpt-100", "model.ckpt-125", "model.ckpt-150"]
    # TensorFlow alone rotates the earlier checkpoints out first.
    assert preview_rotation(listed, planned, 2) == ["model.ckpt-25", "model.ckpt-50", "model.ckpt-75",
                                                    "model.ckpt-100"]
    stays = {"model.ckpt-25", "model.ckpt-50", "model.ckpt-75"}
    assert preview_rotation(listed, planned, 2, stays.__contains__) == ["model.ckpt-100"]
    assert preview_rotation(listed, planned, None) == [] == preview_rotation(listed, planned, 0)
    assert planned_save_steps(0, 30, 25) == [25, 30]
