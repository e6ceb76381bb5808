"""SavedModel, TFLite and ONNX exports through the form and a real worker, downloaded like a .pb."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from dashboard.models import Export, Job
from dashboard.retention import plan_retention, retention_policy
from tests.dashboard import test_freeze_jobs as freezing
from tests.dashboard import test_freeze_verify_commands as commands
from tests.dashboard.test_freeze_jobs import register, role_user, wait_for_job

# The freeze tests' module fixtures: the trained demo template, the roots, the live worker.
demo_template, roots, worker = freezing.demo_template, freezing.roots, freezing.worker
demo = commands.demo  # a scanned copy of the template under the test's own roots (no worker)

pytestmark = pytest.mark.tf


def _export(client, run, checkpoint, kind, worker) -> Export:
    response = client.post(reverse("checkpoint-freeze", args=[run.name, checkpoint.pk]),
                           {"kind": kind, "outputs": ["probs"], "clear_devices": "on"})
    assert response.status_code == 302, response.content[:2000]
    job = wait_for_job(Job.objects.filter(kind=Job.FREEZE).latest("created_at"), worker)
    assert job.status == Job.FINISHED, job.error
    return Export.objects.get(pk=job.result["export"]["id"])


def _expected_probs(checkpoint):
    from persistence.recipes.antispam import AntiSpamRecipe
    from persistence.restore import restore_and_run

    sample = AntiSpamRecipe().sample_input()["x"]
    return sample, restore_and_run(checkpoint.path, checkpoint.meta_path(), feed={"x": sample},
                                   outputs=["probs"]).outputs["probs"]


@pytest.mark.django_db(transaction=True)
def test_saved_model_export_downloads_as_a_tar_that_serves_the_checkpoints_probs(roots, demo_template, worker, tmp_path):
    import tensorflow as tf

    run = register(roots, demo_template)
    checkpoint = run.checkpoints.get(step=50)  # restores with step 25's meta graph
    client = Client()
    client.force_login(role_user("oscar", "operator"))

    export = _export(client, run, checkpoint, "saved_model", worker)

    assert export.kind == Export.SAVED_MODEL and export.verified and export.max_abs_diff <= 1e-6
    assert export.path == str(roots / "exports" / run.name / "50" / "probs.savedmodel")
    # Only the directory is written: its archive is made as it is downloaded.
    assert os.path.isdir(export.path) and not os.path.exists(export.path + ".tar")
    download = client.get(reverse("export-download", args=[export.pk]))
    assert download.status_code == 200 and download["Content-Disposition"].endswith('.tar"')
    data = b"".join(download.streaming_content)
    assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.size_bytes
    # A resumed download: the rest of the archive from byte 1000, only while it is the same one.
    tail = client.get(reverse("export-download", args=[export.pk]), HTTP_RANGE="bytes=1000-",
                      HTTP_IF_RANGE=download["ETag"])
    assert tail.status_code == 206 and b"".join(tail.streaming_content) == data[1000:]

    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(tmp_path, filter="data")
    loaded = tf.saved_model.load(str(tmp_path / "probs.savedmodel"))
    sample, expected = _expected_probs(checkpoint)
    probs = loaded.signatures["serving_default"](x=tf.constant(sample))["probs"].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    # An exported checkpoint is protected from pruning whatever the export's kind.
    decision = {d.step: d for d in plan_retention(run, policy=retention_policy(run, max_to_keep=0, min_age_seconds=0,
                                                                               keep_every_n_steps=10**6)).decisions}[50]
    assert decision.keep and "kept: has export" in decision.reasons


@pytest.mark.django_db(transaction=True)
def test_tflite_quantized_and_onnx_exports_run_in_their_runtimes(roots, demo_template, worker, tmp_path):
    import onnxruntime

    run = register(roots, demo_template)
    checkpoint = run.checkpoints.get(step=25)
    client = Client()
    client.force_login(role_user("olga", "operator"))
    sample, expected = _expected_probs(checkpoint)

    quantized = _export(client, run, checkpoint, "tflite_quantized", worker)
    assert quantized.kind == Export.TFLITE and quantized.path.endswith("/25/probs.tflite")
    assert quantized.verification["quantized"] and 0 <= quantized.verification["top_class_agreement"] <= 1
    page = client.get(quantized.get_absolute_url()).content.decode()
    assert "Dynamic-range quantized" in page and "probs.tflite" in page

    onnx = _export(client, run, checkpoint, "onnx", worker)
    assert onnx.kind == Export.ONNX and onnx.verified and onnx.max_abs_diff <= 1e-4
    data = b"".join(client.get(reverse("export-download", args=[onnx.pk])).streaming_content)
    assert hashlib.sha256(data).hexdigest() == onnx.sha256
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"x": sample})
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@pytest.mark.django_db
def test_variable_lists_are_refused_for_kinds_that_keep_every_variable(roots, demo_template):
    run = register(roots, demo_template)
    checkpoint = run.checkpoints.get(step=25)
    client = Client()
    client.force_login(role_user("otto", "operator"))
    response = client.post(reverse("checkpoint-freeze", args=[run.name, checkpoint.pk]),
                           {"kind": "saved_model", "outputs": ["probs"], "variables_denylist": "hidden/bias"})
    assert response.status_code == 200 and "Only a frozen .pb can leave variables out" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_changed_directory_is_refused_by_the_recheck_and_a_re_export_replaces_an_old_tar(demo, client):
    from dashboard import artifacts, rechecking
    from persistence.tarball import write_tar

    checkpoint = demo.checkpoints.get(step=25)
    export = artifacts.freeze(checkpoint, outputs=["probs"], kind=Export.SAVED_MODEL)
    client.force_login(role_user("vera", "viewer"))
    reference = str(export.path) + ".reference"
    assert write_tar(export.path, reference) == (export.size_bytes, export.sha256)
    os.unlink(reference)
    assert export.disk_change() is None

    with open(os.path.join(export.path, "variables", "variables.index"), "ab") as handle:
        handle.write(b"tampered")
    assert export.disk_change()
    assert client.get(reverse("export-download", args=[export.pk])).status_code == 404
    assert not rechecking.recheck_export(export)
    assert export.disk_change()

    # As an export made when a .tar was written beside the directory: exporting again replaces both.
    tar = export.path + ".tar"
    with open(tar, "wb") as handle:
        handle.write(b"the archive of the replaced model")
    again = artifacts.freeze(checkpoint, outputs=["probs"], kind=Export.SAVED_MODEL)
    assert again.pk == export.pk and not os.path.exists(tar) and again.disk_change() is None
    data = b"".join(client.get(reverse("export-download", args=[again.pk])).streaming_content)
    assert hashlib.sha256(data).hexdigest() == again.sha256 and len(data) == again.size_bytes
