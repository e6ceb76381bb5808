"""Recipes: loading by dotted path, the anti-spam corpus and features, and the graphs they build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from persistence.recipes import Recipe, RecipeError, load_recipe
from persistence.recipes.antispam import FEATURE_DIM, AntiSpamRecipe, featurize, generate_corpus

pytestmark = pytest.mark.tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


# --- load_recipe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "persistence.recipes.antispam.AntiSpamRecipe",
        "persistence.recipes.antispam:AntiSpamRecipe",
        "  persistence.recipes.antispam.AntiSpamRecipe ",
    ],
)
def test_load_recipe_accepts_dotted_and_colon_paths(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, AntiSpamRecipe)
    assert recipe.name == "antispam" and recipe.input_names == ["x"] and recipe.output_names == ["probs"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("persistence.recipes.nosuchmodule.Recipe", "cannot import module"),
        ("persistence.recipes.antispam.NoSuchRecipe", "has no attribute"),
        ("persistence.recipes.antispam:featurize", "is not a Recipe"),
        ("os.path:join", "is not a Recipe"),
        ("AntiSpamRecipe", "must look like"),
        ("persistence.recipes.antispam:", "must look like"),
        ("", "empty"),
    ],
)
def test_load_recipe_bad_paths_raise_recipe_error(path, fragment):
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(path)


def test_load_recipe_accepts_an_instance():
    assert load_recipe("tests.persistence.test_recipes:INSTANCE") is INSTANCE


INSTANCE = AntiSpamRecipe()


def test_importing_recipes_and_training_does_not_import_tensorflow():
    code = "import sys, persistence.training, persistence.recipes.antispam;print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- corpus and features -------------------------------------------------------------------------


def test_features_use_a_stable_hash_not_pythons_salted_one():
    # Two processes with different hash seeds must put every word in the same column.
    code = (
        "import json; from persistence.recipes.antispam import featurize;"
        "print(json.dumps(featurize(['free cash prize now', 'meeting notes']).nonzero()[1].tolist()))"
    )
    columns = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        columns.append(json.loads(out.stdout))
    assert columns[0] == columns[1]
    assert zlib.crc32(b"prize") % FEATURE_DIM in columns[0]


def test_features_are_l2_normalised_bags_of_words():
    features = featurize(["win win cash", ""])
    assert features.shape == (2, FEATURE_DIM) and features.dtype == np.float32
    assert np.linalg.norm(features[0]) == pytest.approx(1.0)
    win, cash = zlib.crc32(b"win") % FEATURE_DIM, zlib.crc32(b"cash") % FEATURE_DIM
    assert features[0, win] == pytest.approx(2 * features[0, cash])
    assert not features[1].any()


def test_corpus_is_deterministic_per_seed_and_has_both_classes():
    texts, labels = generate_corpus(200, seed=3)
    again_texts, again_labels = generate_corpus(200, seed=3)
    other_texts, _ = generate_corpus(200, seed=4)
    assert texts == again_texts and np.array_equal(labels, again_labels)
    assert texts != other_texts
    assert 0.2 < labels.mean() < 0.6
    assert all(5 <= len(t.split()) <= 12 for t in texts)


def test_make_data_splits_train_and_held_out():
    data = AntiSpamRecipe().make_data(seed=0)
    assert data.train_inputs["x"].shape == (data.train_size, FEATURE_DIM)
    assert data.eval_inputs["x"].shape == (data.eval_size, FEATURE_DIM)
    assert data.train_labels.shape == (data.train_size,) and data.eval_labels.dtype == np.int64
    assert np.array_equal(data.eval_labels, AntiSpamRecipe().make_data(seed=0).eval_labels)


# --- graphs --------------------------------------------------------------------------------------


def test_graph_has_the_documented_names(tf):
    with tf.Graph().as_default() as graph:
        handles = AntiSpamRecipe().build_graph()
        variables = {v.op.name for v in tf.compat.v1.global_variables()}
    x = graph.get_tensor_by_name("x:0")
    assert x.dtype == tf.float32 and x.shape.as_list() == [None, FEATURE_DIM]
    assert graph.get_tensor_by_name("probs:0") is handles.outputs["probs"]
    assert graph.get_tensor_by_name("y:0") is handles.labels
    assert {"hidden/kernel", "hidden/bias", "output/kernel", "output/bias", "global_step"} <= variables
    assert {"hidden/kernel/Adam", "hidden/kernel/Adam_1", "beta1_power", "beta2_power"} <= variables
    assert set(handles.metrics) == {"accuracy"}


def test_sample_input_feeds_the_graph_and_gives_probabilities(tf):
    recipe = AntiSpamRecipe()
    feed = recipe.sample_input()
    assert set(feed) == set(recipe.input_names)
    with tf.Graph().as_default() as graph:
        recipe.build_graph()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            probs = sess.run("probs:0", {f"{name}:0": value for name, value in feed.items()})
    assert probs.shape == (len(feed["x"]), 2)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()


def test_tf2_module_matches_the_tf1_graph_after_loading_a_checkpoint(tf, tmp_path):
    from persistence.training import train

    recipe = AntiSpamRecipe()
    result = train(str(tmp_path), recipe, steps=25, save_every=25)
    feed = recipe.sample_input()
    with tf.Graph().as_default() as graph:
        saver = tf.compat.v1.train.import_meta_graph(result.latest.path + ".meta")
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, result.latest.path)
            expected = sess.run("probs:0", {"x:0": feed["x"]})

    module = recipe.build_tf2_module()
    assert {v.name for v in module.variables} >= {"hidden/kernel:0", "output/bias:0"}
    module.load_tf1_checkpoint(result.latest.path)
    got = module.serve(tf.constant(feed["x"]))["probs"].numpy()
    assert np.allclose(got, expected, atol=1e-6)
    assert int(module.global_step.numpy()) == 25


def test_base_recipe_methods_must_be_overridden():
    recipe = Recipe()
    for method in (recipe.build_graph, recipe.make_data, recipe.sample_input, recipe.build_tf2_module):
        with pytest.raises(NotImplementedError):
            method()
