"""Publishing SavedModels into a TF Serving base path: atomic versions, models.config by TF Serving's protos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from persistence.serving import (
    ModelEntry,
    PublishError,
    models_config_text,
    plan_versions,
    publish_saved_model,
    remove_versions,
    versions_on_disk,
    write_models_config,
)

BASE = Path(__file__).resolve().parents[2]


def _fake_saved_model(directory: Path, payload: bytes = b"weights") -> Path:
    (directory / "variables").mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"graph")
    (directory / "variables" / "variables.data-00000-of-00001").write_bytes(payload)
    (directory / "variables" / "variables.index").write_bytes(b"index")
    return directory


def test_publish_is_a_rename_and_idempotent_and_never_replaces_a_version(tmp_path):
    source = _fake_saved_model(tmp_path / "export")
    base = tmp_path / "serving"
    assert publish_saved_model(str(source), str(base), "antispam", 300)
    assert versions_on_disk(str(base), "antispam") == [300]
    assert sorted(os.listdir(base / "antispam")) == ["300"]  # no temporary left
    assert (base / "antispam" / "300" / "variables" / "variables.index").read_bytes() == b"index"

    assert not publish_saved_model(str(source), str(base), "antispam", 300)  # same files: nothing to do
    other = _fake_saved_model(tmp_path / "other", b"other weights")
    with pytest.raises(PublishError, match="already published with other files"):
        publish_saved_model(str(other), str(base), "antispam", 300)
    assert (base / "antispam" / "300" / "variables" / "variables.data-00000-of-00001").read_bytes() == b"weights"


def test_models_config_parses_with_tf_servings_protos_and_names_versions_and_labels(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    path = write_models_config(str(tmp_path), [ModelEntry("antispam", [250, 300], {"prod": 300, "canary": 250}),
                                               ModelEntry("ranker", [7], {})])
    config = text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    models = {m.name: m for m in config.model_config_list.config}
    assert set(models) == {"antispam", "ranker"}
    antispam = models["antispam"]
    assert antispam.base_path == str(tmp_path / "antispam") and antispam.model_platform == "tensorflow"
    assert list(antispam.model_version_policy.specific.versions) == [250, 300]
    assert dict(antispam.version_labels) == {"prod": 300, "canary": 250}
    with pytest.raises(PublishError, match="not served"):
        models_config_text(str(tmp_path), [ModelEntry("antispam", [250], {"prod": 300})])


def test_version_plan_keeps_labelled_and_newest_and_removal_leaves_no_half_version(tmp_path):
    decisions = {d.version: d for d in plan_versions([100, 200, 300, 400], {"prod": 100}, keep_newest=2)}
    assert decisions[100].keep and decisions[100].reasons == ["kept: label prod"]
    assert decisions[400].keep and decisions[300].keep and not decisions[200].keep
    assert decisions[200].reasons == ["removed: beyond the newest 2"]

    base = tmp_path / "serving"
    for version in (100, 200):
        publish_saved_model(str(_fake_saved_model(tmp_path / f"e{version}")), str(base), "m", version)
    assert remove_versions(str(base), "m", [200]) == [200]
    assert sorted(os.listdir(base / "m")) == ["100"]


KILL_SCRIPT = """
import sys
from persistence.serving import publish_saved_model
publish_saved_model(sys.argv[1], sys.argv[2], "big", 5)
"""


def test_kill_9_during_a_publish_leaves_no_version_a_server_could_load(tmp_path):
    source = _fake_saved_model(tmp_path / "export", b"")
    with open(source / "variables" / "variables.data-00000-of-00001", "wb") as handle:
        block = b"\x01" * (1 << 20)
        for _ in range(400):  # real bytes (not a sparse file): the copy takes a while
            handle.write(block)
    base = tmp_path / "serving"
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(base)], cwd=BASE,
                             env={**os.environ, "PYTHONPATH": str(BASE)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((base / "big").is_dir() and os.listdir(base / "big")):
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    left = os.listdir(base / "big")
    # Whenever it died, a server finds either nothing or the whole version, never part of it.
    if "5" in left:
        assert (base / "big" / "5" / "variables" / "variables.data-00000-of-00001").stat().st_size == 400 << 20
    else:
        assert versions_on_disk(str(base), "big") == [] and all(name.startswith(".") for name in left)
        from persistence.files import remove_stale_temp_files

        remove_stale_temp_files(base / "big")
        assert os.listdir(base / "big") == []


@pytest.mark.tf
def test_a_published_saved_model_loads_from_its_version_directory(tmp_path):
    import tensorflow as tf

    from persistence.savedmodel import export_saved_model
    from tests.persistence.test_freeze import SAMPLE, _numpy_probs, _train_run

    first, last = _train_run(str(tmp_path / "run"))
    export_saved_model(last, str(tmp_path / "exports" / "probs.savedmodel"), meta_path=first + ".meta",
                       outputs=["probs"], sample_feed=SAMPLE)
    publish_saved_model(str(tmp_path / "exports" / "probs.savedmodel"), str(tmp_path / "serving"), "antispam", 3)

    loaded = tf.saved_model.load(str(tmp_path / "serving" / "antispam" / "3"))
    probs = loaded.signatures["serving_default"](x=tf.constant(SAMPLE["x"]))["probs"].numpy()
    np.testing.assert_allclose(probs, _numpy_probs(last, SAMPLE["x"]), atol=1e-6)
