"""SavedModel and TFLite exports of real checkpoints, loaded back with their own loaders."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from persistence.errors import FreezeError, UnsafeGraph
from persistence.savedmodel import (
    ONNX,
    ONNX_TOLERANCE,
    SAVEDMODEL_TOLERANCE,
    TFLITE,
    TFLITE_TOLERANCE,
    export_file,
    export_saved_model,
)
from persistence.tarball import archive_layout, write_tar
from tests.persistence.test_freeze import SAMPLE, _numpy_probs, _train_run

pytestmark = pytest.mark.tf

RECIPE = "persistence.recipes.antispam.AntiSpamRecipe"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The seed pattern: a meta graph only with the first save; the later one restores with it."""
    return _train_run(str(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def tf2_prefix(tmp_path_factory):
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe

    module = AntiSpamRecipe().build_tf2_module()
    module.hidden.kernel.assign(np.random.default_rng(1).normal(size=module.hidden.kernel.shape).astype(np.float32))
    return tf.train.Checkpoint(model=module).save(str(tmp_path_factory.mktemp("tf2") / "ckpt"))


def _entries(directory):
    return sorted(os.listdir(directory))


def test_tf1_saved_model_serves_the_checkpoints_probs(run, tmp_path):
    import tensorflow as tf

    first, last = run
    target = tmp_path / "exports" / "probs"
    result = export_saved_model(last, str(target), meta_path=first + ".meta", outputs=["probs"],
                                sample_feed=SAMPLE)

    assert result.verified and result.max_abs_diff <= SAVEDMODEL_TOLERANCE
    assert result.signature_inputs == {"x": "x:0"} and result.signature_outputs == {"probs": "probs:0"}
    loaded = tf.saved_model.load(str(target))
    probs = loaded.signatures["serving_default"](x=tf.constant(SAMPLE["x"]))["probs"].numpy()
    np.testing.assert_allclose(probs, _numpy_probs(last, SAMPLE["x"]), atol=1e-6)
    # Only the directory: no temporary beside it, and no archive (downloads make it from the directory).
    assert _entries(tmp_path / "exports") == ["probs"]


def test_archive_is_reproducible_and_holds_the_directory(run, tmp_path):
    first, last = run
    one = export_saved_model(last, str(tmp_path / "a" / "m"), meta_path=first + ".meta", outputs=["probs"])
    two = export_saved_model(last, str(tmp_path / "b" / "m"), meta_path=first + ".meta", outputs=["probs"])

    assert one.sha256 == two.sha256  # sorted entries, fixed times and owners
    # What was recorded is the archive tarfile writes of the final directory (hashed from its scratch copy).
    size, sha256 = write_tar(tmp_path / "a" / "m", tmp_path / "reference.tar")
    assert (one.size_bytes, one.sha256) == (size, sha256)
    data = b"".join(archive_layout(tmp_path / "a" / "m").iter_bytes())
    assert hashlib.sha256(data).hexdigest() == one.sha256 and len(data) == one.size_bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        assert "m/saved_model.pb" in names and "m/variables/variables.index" in names
        member = archive.getmember("m/saved_model.pb")
        with open(tmp_path / "a" / "m" / "saved_model.pb", "rb") as original:
            assert archive.extractfile(member).read() == original.read()


def test_a_re_export_removes_the_archive_older_exports_wrote_and_nothing_else(run, tmp_path):
    first, last = run
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "m.tar").write_bytes(b"an archive of the model this export replaces")
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep")
    os.symlink(precious, exports / "n.tar")  # a link where another export's archive would be
    (exports / "o.tar").mkdir()  # not a file: never removed
    (exports / "m.tar.keep").write_bytes(b"keep")
    for name in ("m", "n", "o"):
        export_saved_model(last, str(exports / name), meta_path=first + ".meta", outputs=["probs"])
    assert _entries(exports) == ["m", "m.tar.keep", "n", "n.tar", "o", "o.tar"]
    assert precious.read_bytes() == b"keep" and os.path.islink(exports / "n.tar")


def test_tf2_recipe_saved_model_matches_the_module(tf2_prefix, tmp_path):
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe

    sample = AntiSpamRecipe().sample_input()
    result = export_saved_model(tf2_prefix, str(tmp_path / "serve"), recipe_path=RECIPE, sample_feed=sample)

    assert result.verified and result.max_abs_diff <= SAVEDMODEL_TOLERANCE
    module = AntiSpamRecipe().build_tf2_module()
    tf.train.Checkpoint(model=module).read(tf2_prefix).expect_partial()
    expected = module.serve(tf.constant(sample["x"]))["probs"].numpy()
    loaded = tf.saved_model.load(str(tmp_path / "serve"))
    (key,) = result.signature_inputs
    got = loaded.signatures["serving_default"](**{key: tf.constant(sample["x"])})["probs"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tflite_float_runs_in_the_interpreter_like_the_checkpoint(run, tmp_path):
    import tensorflow as tf

    first, last = run
    target = tmp_path / "probs.tflite"
    result = export_file(TFLITE, last, str(target), meta_path=first + ".meta", outputs=["probs"], sample_feed=SAMPLE)

    assert result.verified and not result.quantized and result.max_abs_diff <= TFLITE_TOLERANCE
    interpreter = tf.lite.Interpreter(model_path=str(target))
    got = interpreter.get_signature_runner("serving_default")(x=SAMPLE["x"])["probs"]
    np.testing.assert_allclose(got, _numpy_probs(last, SAMPLE["x"]), atol=TFLITE_TOLERANCE)
    assert _entries(tmp_path) == ["probs.tflite"]  # the scratch SavedModel is gone
    assert hashlib.sha256(target.read_bytes()).hexdigest() == result.sha256


def test_tflite_quantized_reports_its_difference_instead_of_failing(tf2_prefix, tmp_path):
    from persistence.recipes.antispam import AntiSpamRecipe

    result = export_file(TFLITE, tf2_prefix, str(tmp_path / "q.tflite"), quantize=True, recipe_path=RECIPE,
                           sample_feed=AntiSpamRecipe().sample_input())

    assert result.quantized and result.verified
    assert result.max_abs_diff >= 0 and 0.0 <= result.top_class_agreement <= 1.0


def test_an_export_that_does_not_match_is_never_visible(run, tmp_path, monkeypatch):
    """A SavedModel whose loaded answer differs (here: its variables overwritten before the
    check, as a tampered or mis-saved export would be) is refused and leaves nothing behind."""
    import persistence.savedmodel as savedmodel

    first, last = run
    original = savedmodel._verify_savedmodel

    def tamper_then_verify(directory, feed_by_key, reference, **kwargs):
        _, other = _train_run(str(tmp_path / "other"))  # different weights, same graph
        for suffix in (".index", ".data-00000-of-00001"):
            with open(other + suffix, "rb") as src, open(os.path.join(directory, "variables", "variables" + suffix), "wb") as dst:
                dst.write(src.read())
        return original(directory, feed_by_key, reference, **kwargs)

    monkeypatch.setattr(savedmodel, "_verify_savedmodel", tamper_then_verify)
    with pytest.raises(FreezeError, match="differs from the checkpoint"):
        export_saved_model(last, str(tmp_path / "out" / "m"), meta_path=first + ".meta", outputs=["probs"],
                           sample_feed=SAMPLE)
    assert _entries(tmp_path / "out") == []


def test_unsafe_graph_is_refused_for_saved_models_too(tmp_path):
    first, last = _train_run(str(tmp_path / "unsafe"), unsafe=True)
    with pytest.raises(UnsafeGraph):
        export_saved_model(last, str(tmp_path / "out"), meta_path=first + ".meta",
                           outputs=["probs", "read_config"])
    assert not (tmp_path / "out").exists()


def test_onnx_runs_in_onnxruntime_like_the_checkpoint(run, tmp_path):
    import onnxruntime

    first, last = run
    target = tmp_path / "probs.onnx"
    result = export_file(ONNX, last, str(target), meta_path=first + ".meta", outputs=["probs"], sample_feed=SAMPLE)

    assert result.verified and result.max_abs_diff <= ONNX_TOLERANCE
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"x": SAMPLE["x"]})
    np.testing.assert_allclose(probs, _numpy_probs(last, SAMPLE["x"]), atol=ONNX_TOLERANCE)
    assert _entries(tmp_path) == ["probs.onnx"]


@pytest.mark.parametrize("kind", [TFLITE, ONNX])
def test_tf2_recipe_single_file_kinds_match_the_module(tf2_prefix, tmp_path, kind):
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe

    sample = AntiSpamRecipe().sample_input()
    result = export_file(kind, tf2_prefix, str(tmp_path / f"serve.{kind}"), recipe_path=RECIPE, sample_feed=sample)

    assert result.verified and not result.quantized and result.max_abs_diff <= max(TFLITE_TOLERANCE, ONNX_TOLERANCE)
    module = AntiSpamRecipe().build_tf2_module()
    tf.train.Checkpoint(model=module).read(tf2_prefix).expect_partial()
    expected = module.serve(tf.constant(sample["x"]))["probs"].numpy()
    data = (tmp_path / f"serve.{kind}").read_bytes()
    (key,) = result.signature_inputs
    if kind == TFLITE:
        got = tf.lite.Interpreter(model_content=data).get_signature_runner("serving_default")(**{key: sample["x"]})["probs"]
    else:
        import onnxruntime

        (got,) = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["probs"], {key: sample["x"]})
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_tf1_quantized_tflite_is_smaller_and_agrees_on_the_top_class(run, tmp_path):
    first, last = run
    float_model = export_file(TFLITE, last, str(tmp_path / "f.tflite"), meta_path=first + ".meta",
                              outputs=["probs"], sample_feed=SAMPLE)
    quantized = export_file(TFLITE, last, str(tmp_path / "q.tflite"), quantize=True, meta_path=first + ".meta",
                            outputs=["probs"], sample_feed=SAMPLE)
    assert quantized.quantized and quantized.size_bytes <= float_model.size_bytes
    assert quantized.top_class_agreement is not None and 0.0 <= quantized.top_class_agreement <= 1.0


def test_the_tf1_verification_checks_the_written_signature_not_only_the_values(run, tmp_path):
    import persistence.savedmodel as savedmodel

    first, last = run
    target = str(tmp_path / "m")
    export_saved_model(last, target, meta_path=first + ".meta", outputs=["probs"], sample_feed=SAMPLE)
    expected = {"probs": _numpy_probs(last, SAMPLE["x"])}
    assert savedmodel._verify_savedmodel(target, {"x": SAMPLE["x"]}, expected, tf2=False) <= SAVEDMODEL_TOLERANCE
    with pytest.raises(FreezeError, match="signature takes x"):
        savedmodel._verify_savedmodel(target, {"inputs": SAMPLE["x"]}, expected, tf2=False)
    with pytest.raises(FreezeError, match="does not return logits"):
        savedmodel._verify_savedmodel(target, {"x": SAMPLE["x"]}, {**expected, "logits": expected["probs"]},
                                      tf2=False)
    os.unlink(os.path.join(target, "variables", "variables.index"))
    with pytest.raises(FreezeError, match="does not load and run"):
        savedmodel._verify_savedmodel(target, {"x": SAMPLE["x"]}, expected, tf2=False)
