"""Freeze jobs through a real worker: verified .pb exports that serve the checkpoint's probs; clear failures.

The worker (``manage.py rqworker`` with the TensorFlow-preloading class) is started once for the
module and serves every test; the form and page tests need no worker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from importlib import import_module

import numpy as np
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from dashboard import artifacts, jobs, scanning
from dashboard.models import Checkpoint, Export, Job, Run
from tests.live import LiveWorker, module_roots, module_worker, wait_for

pytestmark = pytest.mark.tf

ROLE_PERMISSIONS = import_module("dashboard.migrations.0002_roles").ROLE_PERMISSIONS


def role_user(username: str, role: str) -> User:
    # Transactional tests flush the tables, and with them the groups the data migration created.
    group, _ = Group.objects.get_or_create(name=role)
    group.permissions.set(Permission.objects.filter(content_type__app_label="dashboard",
                                                    codename__in=ROLE_PERMISSIONS[role]))
    user = User.objects.create_user(username, password="pw-for-tests-only")
    user.groups.add(group)
    return user


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    """The demo content: the anti-spam recipe trained and saved the seed's way (first save has the .meta)."""
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("demo-template") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "freeze-roots") as base:
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    with module_worker(django_db_blocker, tmp_path_factory) as live:
        yield live


def register(roots, template, name: str | None = None) -> Run:
    name = name or f"demo-{uuid.uuid4().hex[:6]}"
    directory = roots / "checkpoints" / name
    shutil.copytree(template, directory)
    run = Run.objects.create(name=name, directory=str(directory))
    scanning.scan(run)
    return run


def wait_for_job(job: Job, worker: LiveWorker, timeout: float = 120) -> Job:
    def ended():
        job.refresh_from_db()
        return job.is_ended

    try:
        wait_for(ended, timeout, interval=0.1, what=f"job {job.pk} to end")
    except TimeoutError:
        log = worker.log_path.read_text()[-4000:] if worker.log_path else ""
        raise AssertionError(f"job {job.pk} is still {job.status}; worker log:\n{log}") from None
    return job


def probs_of_pb(data: bytes, feed: np.ndarray) -> np.ndarray:
    """What a serving process does with the downloaded file."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run("probs:0", {"x:0": feed})


# --- through the worker ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_freeze_from_the_form_exports_a_verified_pb_that_gives_the_checkpoints_probs(roots, demo_template, worker):
    from persistence.recipes.antispam import AntiSpamRecipe
    from persistence.restore import restore_and_run

    run = register(roots, demo_template)
    checkpoint = run.checkpoints.get(step=50)  # saved with write_meta_graph=False: restores with step 25's
    assert not checkpoint.has_own_meta and checkpoint.meta_source.step == 25
    client = Client()
    operator = role_user("oscar", "operator")
    client.force_login(operator)
    freeze_url = reverse("checkpoint-freeze", args=[run.name, checkpoint.pk])

    response = client.post(freeze_url, {"outputs": ["probs"], "clear_devices": "on"})

    assert response.status_code == 302 and response["Location"] == checkpoint.get_absolute_url()
    job = Job.objects.get(kind=Job.FREEZE)
    assert job.params == {"kind": "frozen_pb", "quantize": False, "outputs": ["probs"], "clear_devices": True, "variables_allowlist": [],
                          "variables_denylist": []}
    wait_for_job(job, worker)
    assert job.status == Job.FINISHED, job.error

    export = Export.objects.get()
    assert job.result == {"export": export.as_json()}
    assert export.path == str(roots / "exports" / run.name / "50" / "probs.pb")
    assert export.verified and export.max_abs_diff is not None and export.max_abs_diff <= 1e-6
    assert export.outputs == ["probs"] and [i["name"] for i in export.inputs] == ["x"]
    assert export.op_histogram["Softmax"] == 1 and export.node_count == sum(export.op_histogram.values())
    assert export.created_by == operator and export.checkpoint == checkpoint
    assert export.verification["meta"] == "model.ckpt-25.meta" and export.verification["sample_inputs"] == ["x"]

    # The download, through Django's streaming response, is exactly the recorded file...
    download = client.get(reverse("export-download", args=[export.pk]))
    assert download.status_code == 200
    data = b"".join(download.streaming_content)
    assert len(data) == export.size_bytes == os.path.getsize(export.path)
    assert hashlib.sha256(data).hexdigest() == export.sha256
    # ...and serves the same probs as the checkpoint restored with its meta graph.
    sample = AntiSpamRecipe().sample_input()["x"]
    expected = restore_and_run(checkpoint.path, checkpoint.meta_path(), feed={"x": sample},
                               outputs=["probs"]).outputs["probs"]
    np.testing.assert_allclose(probs_of_pb(data, sample), expected, rtol=0, atol=1e-6)

    # The checkpoint page lists it with its verdict and a download button.
    html = client.get(checkpoint.get_absolute_url()).content.decode()
    assert "probs.pb" in html and "verified · max diff" in html
    assert reverse("export-download", args=[export.pk]) in html


@pytest.mark.django_db(transaction=True)
def test_freeze_failures_end_the_job_failed_with_a_clear_message(roots, demo_template, worker):
    run = register(roots, demo_template)
    first, later = run.checkpoints.get(step=25), run.checkpoints.get(step=50)
    unknown = jobs.start(Job.FREEZE, run=run, checkpoint=later, params={"outputs": ["prob"]})
    denied = jobs.start(Job.FREEZE, run=run, checkpoint=later,
                        params={"outputs": ["probs"], "variables_denylist": ["hidden/kernel"]})
    bare = register(roots, demo_template)
    os.unlink(os.path.join(bare.directory, "model.ckpt-25.meta"))
    scanning.scan(bare)
    no_meta = jobs.start(Job.FREEZE, run=bare, checkpoint=bare.checkpoints.get(step=50),
                         params={"outputs": ["probs"]})

    for job in (unknown, denied, no_meta):
        wait_for_job(job, worker)
        assert job.status == Job.FAILED
    assert "unknown output node(s) in the graph: 'prob' (closest: probs" in unknown.error
    assert "hidden/kernel" in denied.error and "kept from being frozen" in denied.error
    assert "missing meta graph" in no_meta.error
    assert not Export.objects.exists()
    assert not os.path.exists(roots / "exports" / run.name / "50" / "prob.pb")
    assert first.exports.count() == 0
    assert worker.process.poll() is None


@pytest.mark.django_db(transaction=True)
def test_unsafe_graph_is_refused_unless_the_run_is_trusted(roots, worker, tmp_path):
    import tensorflow as tf

    directory = roots / "checkpoints" / f"unsafe-{uuid.uuid4().hex[:6]}"
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", [3, 2])
        tf.nn.softmax(tf.matmul(x, w), name="probs")
        tf.io.read_file(str(tmp_path / "anything"), name="read_config")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1)
    run = Run.objects.create(name=directory.name, directory=str(directory))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()

    refused = wait_for_job(jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]}),
                           worker)
    assert refused.status == Job.FAILED
    assert "unsafe ops" in refused.error and "ReadFile" in refused.error and "trusted" in refused.error

    Run.objects.filter(pk=run.pk).update(trusted=True)
    allowed = wait_for_job(jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]}),
                           worker)
    assert allowed.status == Job.FINISHED, allowed.error
    export = Export.objects.get()
    assert export.verified and export.verification["unsafe_ops_allowed"] == ["ReadFile"]


@pytest.mark.django_db(transaction=True)
def test_tf2_checkpoint_freezes_through_the_runs_recipe(roots, worker):
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe

    directory = roots / "checkpoints" / f"tf2-{uuid.uuid4().hex[:6]}"
    module = AntiSpamRecipe().build_tf2_module()
    module.hidden.kernel.assign(tf.random.stateless_normal(module.hidden.kernel.shape, seed=[1, 2]))
    module.output.kernel.assign(tf.random.stateless_normal(module.output.kernel.shape, seed=[3, 4]))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=module), str(directory), max_to_keep=3)
    manager.save(checkpoint_number=7)
    run = Run.objects.create(name=directory.name, directory=str(directory))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()
    assert checkpoint.format == "tf2"
    client = Client()
    client.force_login(role_user("tina", "operator"))
    freeze_url = reverse("checkpoint-freeze", args=[run.name, checkpoint.pk])
    form = client.get(freeze_url).content.decode()
    assert "traced through the run's recipe" in form and 'value="probs"' in form
    assert 'name="other_outputs"' not in form  # a TF2 freeze serves the recipe's outputs

    assert client.post(freeze_url, {"outputs": ["probs"]}).status_code == 302
    job = wait_for_job(Job.objects.get(kind=Job.FREEZE), worker)

    assert job.status == Job.FINISHED, job.error
    export = Export.objects.get()
    assert export.path.endswith(f"/{run.name}/7/serve.pb") and export.verified
    assert export.verification["output_keys"].keys() == {"probs"}
    sample = AntiSpamRecipe().sample_input()["x"]
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(open(export.path, "rb").read())
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            frozen = sess.run(export.outputs[0] + ":0", {export.inputs[0]["name"] + ":0": sample})
    np.testing.assert_allclose(frozen, module.serve(tf.constant(sample))["probs"].numpy(), atol=1e-6)


# --- the form and the page (no worker) -------------------------------------------------------


@pytest.fixture
def page_run(demo_template, checkpoint_root, db) -> Run:
    directory = checkpoint_root / "demo"
    shutil.copytree(demo_template, directory)
    run = Run.objects.create(name="demo", directory=str(directory))
    scanning.scan(run)
    yield run
    jobs.get_queue().empty()  # nothing runs these jobs, and their rows are rolled back


def test_freeze_form_suggests_probs_and_shows_inputs_and_meta_source(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    html = client.get(reverse("checkpoint-freeze", args=["demo", checkpoint.pk])).content.decode()
    assert 'value="probs"' in html and 'value="probs" id="id_outputs_0" checked' in html
    assert html.index('value="probs"') < html.index('value="loss"')  # best guess first
    assert "model.ckpt-25.meta" in html and "<code>x</code>" in html
    assert 'name="clear_devices" aria-describedby="id_clear_devices_helptext" id="id_clear_devices" checked' in html


def test_freeze_form_rejects_unknown_names_inline_and_starts_nothing(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    url = reverse("checkpoint-freeze", args=["demo", checkpoint.pk])
    response = client.post(url, {"other_outputs": "prob", "variables_denylist": "hidden/kernal"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "Unknown output node(s) in the graph: &#x27;prob&#x27; (closest: probs" in html
    assert "hidden/kernal" in html and "closest: hidden/kernel" in html
    response = client.post(url, {})
    assert "Choose at least one output node." in response.content.decode()
    assert not Job.objects.exists()


def test_freeze_form_bounds_typed_names_before_any_fuzzy_matching(client, operator, page_run):
    """200,000 typed output names once kept a web worker fuzzy-matching until it was killed: the
    count and length of typed names are bounded, and only a few unknown names are matched."""
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    url = reverse("checkpoint-freeze", args=["demo", checkpoint.pk])

    started = time.monotonic()
    flood = client.post(url, {"other_outputs": " ".join(f"n{i}" for i in range(200_000))})
    assert time.monotonic() - started < 5
    assert "Ensure this value has at most" in flood.content.decode()

    too_many = client.post(url, {"outputs": ["probs"], "other_outputs": " ".join(f"n{i}" for i in range(65))})
    assert "At most 64 names, not 65." in too_many.content.decode()
    too_long = client.post(url, {"outputs": ["probs"], "variables_denylist": "v" * 257})
    assert "at most 256 characters" in too_long.content.decode()

    unknown = client.post(url, {"other_outputs": "prob " + " ".join(f"nope{i}" for i in range(20))})
    html = unknown.content.decode()
    assert "closest: probs" in html and "and 16 more unknown name(s)" in html
    assert not Job.objects.exists()


def test_freeze_form_starts_a_job_with_typed_outputs_and_variable_lists(client, operator, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    url = reverse("checkpoint-freeze", args=["demo", checkpoint.pk])
    response = client.post(url, {"outputs": ["probs"], "other_outputs": "predictions, logits",
                                 "variables_allowlist": "hidden/kernel\nhidden/bias, output/kernel,output/bias"})
    assert response.status_code == 302
    job = Job.objects.get()
    assert job.kind == Job.FREEZE and job.checkpoint == checkpoint and job.requested_by == operator
    assert job.params == {"kind": "frozen_pb", "quantize": False,
                          "outputs": ["probs", "predictions", "logits"], "clear_devices": False,
                          "variables_allowlist": ["hidden/kernel", "hidden/bias", "output/kernel", "output/bias"],
                          "variables_denylist": []}
    html = client.get(checkpoint.get_absolute_url()).content.decode()
    assert "Freezing…" in html and reverse("checkpoint-exports", args=["demo", checkpoint.pk]) in html
    partial = client.get(reverse("checkpoint-exports", args=["demo", checkpoint.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in partial  # keeps polling while the freeze is queued


def test_freeze_form_without_a_meta_graph_says_so_and_has_no_submit(client, operator, page_run):
    os.unlink(os.path.join(page_run.directory, "model.ckpt-25.meta"))
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(operator)
    url = reverse("checkpoint-freeze", args=["demo", checkpoint.pk])
    html = client.get(url).content.decode()
    assert "is missing on disk" in html and "Start export job" not in html
    assert "is missing on disk" in client.post(url, {"outputs": ["probs"]}).content.decode()
    assert not Job.objects.exists()


def test_viewers_cannot_freeze(client, viewer, page_run):
    checkpoint = page_run.checkpoints.get(step=50)
    client.force_login(viewer)
    url = reverse("checkpoint-freeze", args=["demo", checkpoint.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"outputs": ["probs"]}).status_code == 403
    assert not Job.objects.exists()


def test_checkpoint_of_another_run_is_404(client, operator, page_run, checkpoint_root):
    other = Run.objects.create(name="other", directory=str(checkpoint_root))
    client.force_login(operator)
    checkpoint = page_run.checkpoints.get(step=50)
    assert client.get(reverse("checkpoint-freeze", args=[other.name, checkpoint.pk])).status_code == 404


def test_freeze_of_a_pruned_checkpoint_is_a_clear_error(page_run):
    from persistence.freeze import FreezeError

    checkpoint = page_run.checkpoints.get(step=50)
    Checkpoint.objects.filter(pk=checkpoint.pk).update(status=Checkpoint.PRUNED)
    checkpoint.refresh_from_db()
    with pytest.raises(FreezeError, match="is pruned: its files are gone"):
        artifacts.freeze(checkpoint, outputs=["probs"])
