"""Save jobs started from the run page, and re-saving a subset of a checkpoint, through a real worker.

The files on disk are checked with TensorFlow's own readers (``get_checkpoint_state``,
``list_variables``, ``load_checkpoint``), not with ours.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid

import numpy as np
import pytest
from django.urls import reverse

from dashboard import jobs, pruning, scanning
from dashboard.models import AuditEvent, Checkpoint, Export, Job, Run
from tests.dashboard import job_recipes as recipes
from tests.dashboard.conftest import make_user
from tests.live import wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("save-jobs").resolve()


@pytest.fixture(scope="module")
def exports_root(tmp_path_factory):
    return tmp_path_factory.mktemp("save-exports").resolve()


@pytest.fixture(scope="module")
def worker(jobs_root, exports_root, django_db_setup, tmp_path_factory):
    live = recipes.start_worker(jobs_root, tmp_path_factory.mktemp("logs") / "worker.log",
                                EXPORT_ROOT=str(exports_root))
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def job_settings(settings, jobs_root, exports_root):
    settings.CHECKPOINT_ROOTS = [jobs_root]
    settings.EXPORT_ROOT = exports_root
    settings.CHECKPOINT_RECIPES = recipes.ALL
    recipes.ensure_roles()


@pytest.fixture
def run(jobs_root) -> Run:
    name = f"run-{uuid.uuid4().hex[:8]}"
    (jobs_root / name).mkdir()
    return Run.objects.create(name=name, directory=str(jobs_root / name))


@pytest.fixture
def operator_client(client, db):
    client.force_login(make_user("olga-operator", "operator"))
    return client


def form_data(**overrides) -> dict:
    data = {
        "recipe": recipes.BUILT_IN, "steps": 30, "save_every": 10, "restore_from": "", "prefix": "model.ckpt",
        "max_to_keep": "", "keep_checkpoint_every_n_hours": "10000", "write_meta_graph": "always",
        "var_list_mode": "all", "var_names": "", "rename_map": "",
    }
    return {**data, **overrides}


def start_from_page(client, run: Run, **overrides) -> Job:
    response = client.post(reverse("run-save", args=[run.name]), form_data(**overrides))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.filter(run=run, kind=Job.SAVE).latest("created_at")
    assert response["Location"] == job.get_absolute_url()
    return job


def agree_with_tensorflow(run: Run) -> None:
    """Rows of checkpoints on disk == what TensorFlow's state file and readers say."""
    state = tf().train.get_checkpoint_state(run.directory)
    on_disk = {c.prefix: c for c in run.checkpoints.on_disk()}
    assert {os.path.basename(p) for p in state.all_model_checkpoint_paths} <= set(on_disk)
    latest = os.path.basename(state.model_checkpoint_path)
    assert on_disk[latest].latest_in == ["checkpoint"]
    for prefix, row in on_disk.items():
        listed = dict(tf().train.list_variables(os.path.join(run.directory, prefix)))
        assert {v["name"]: v["shape"] for v in row.variables} == {k: list(v) for k, v in listed.items()}, prefix
        for f in row.files:
            assert os.path.getsize(os.path.join(run.directory, f["name"])) == f["size"]
        assert row.size_bytes == sum(f["size"] for f in row.files)


# --- the acceptance path --------------------------------------------------------------------


def test_300_step_save_from_the_run_page_moves_progress_and_records_every_save(worker, run, operator_client):
    page = operator_client.get(run.get_absolute_url()).content.decode()
    assert reverse("run-save", args=[run.name]) in page  # the "Train & save" button

    job = start_from_page(operator_client, run, recipe=recipes.SLOW, steps=300, save_every=25)

    seen, polled = set(), []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job.refresh_from_db()
        seen.add(job.progress)
        if job.status == Job.RUNNING and 0 < job.progress < 100 and len(polled) < 3:
            polled.append(operator_client.get(reverse("job-progress", args=[job.pk])).content.decode())
        if job.is_ended:
            break
        time.sleep(0.05)
    assert job.status == Job.FINISHED, job.error
    assert len({p for p in seen if 0 < p < 100}) >= 3, f"progress never moved: {sorted(seen)}"
    assert any('hx-trigger="every 1s"' in html and "Step " in html and "loss" in html for html in polled)
    assert "hx-trigger" not in operator_client.get(reverse("job-progress", args=[job.pk])).content.decode()

    steps = list(range(25, 301, 25))
    rows = {c.step: c for c in run.checkpoints.all()}
    assert sorted(rows) == steps
    assert all(c.status == Checkpoint.PRESENT for c in rows.values())
    assert all(isinstance(c.metrics.get("loss"), float) and 0 <= c.metrics["accuracy"] <= 1 for c in rows.values())
    assert rows[300].metrics["loss"] < rows[25].metrics["loss"]
    history = operator_client.get(run.get_absolute_url()).content.decode()
    for step in steps:
        assert f"model.ckpt-{step}<" in history
    assert f"{rows[300].metrics['loss']:.4f}" in history and "accuracy" in history
    agree_with_tensorflow(run)


def test_continuing_with_max_to_keep_keeps_pinned_exported_and_earlier_checkpoints(worker, run, operator_client):
    first = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN, steps=30, save_every=10,
                                                                     max_to_keep=5))
    recipes.wait_for_job(first, Job.FINISHED, timeout=120)
    rows = {c.step: c for c in run.checkpoints.all()}
    pruning.pin(rows[20], "baseline for the report")
    freeze = jobs.start(Job.FREEZE, run=run, checkpoint=rows[30], params={"outputs": ["probs"]})
    recipes.wait_for_job(freeze, (Job.FINISHED, Job.FAILED), timeout=120)
    assert freeze.status == Job.FINISHED, freeze.error
    export = Export.objects.get(checkpoint=rows[30])

    # TensorFlow's Saver recovers 10, 20 and 30 from the state file and, with max_to_keep 2,
    # would delete all three while writing 40, 50 and 60. The form says so before anything runs.
    page = operator_client.get(reverse("run-save", args=[run.name])).content.decode()
    assert "What max_to_keep removes" in page and 'hx-trigger="change"' in page
    preview = operator_client.get(reverse("run-save", args=[run.name]), form_data(
        recipe=recipes.BUILT_IN, steps=30, save_every=10, max_to_keep=2, restore_from=rows[30].pk,
        preview="rotation")).content.decode()
    assert "<html" not in preview
    assert "It deletes <strong>1</strong> of its own as it goes: model.ckpt-40" in preview
    assert "<code>model.ckpt-10</code> — not written by this save job" in preview
    assert "<code>model.ckpt-20</code> — pinned (baseline for the report); not written by this save job" in preview
    assert "<code>model.ckpt-30</code> — has an export" in preview
    job = start_from_page(operator_client, run, recipe=recipes.BUILT_IN, steps=30, save_every=10, max_to_keep=2,
                          restore_from=rows[30].pk)
    recipes.wait_for_job(job, (Job.FINISHED, Job.FAILED), timeout=120)
    assert job.status == Job.FINISHED, job.error

    for step in (10, 20, 30):
        row = Checkpoint.objects.get(pk=rows[step].pk)
        assert row.status == Checkpoint.PRESENT, (step, row.problems)
        for f in row.files:
            assert os.path.exists(os.path.join(run.directory, f["name"])), f["name"]
        assert tf().train.load_checkpoint(row.path).get_tensor("global_step") == step
    assert Checkpoint.objects.get(pk=rows[20].pk).pinned
    assert os.path.exists(export.path)
    # Only what the job wrote itself is rotated: it keeps its newest two.
    assert job.result["pruned_by_saver"] == ["model.ckpt-40"]
    assert run.checkpoints.get(step=40).status == Checkpoint.PRUNED
    assert sorted(job.result["kept_from_rotation"]) == ["model.ckpt-10", "model.ckpt-20", "model.ckpt-30"]
    assert job.result["kept_from_rotation"]["model.ckpt-20"].startswith("pinned (baseline for the report)")
    assert "has an export" in job.result["kept_from_rotation"]["model.ckpt-30"]
    saver_deleted = [p for e in AuditEvent.objects.filter(action="saver_pruned") for p in e.details["deleted"]]
    assert saver_deleted == ["model.ckpt-40"]
    agree_with_tensorflow(run)
    assert tf().train.latest_checkpoint(run.directory) == os.path.join(run.directory, "model.ckpt-60")


def test_checkpoints_are_recorded_while_the_job_is_still_running(worker, run):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(steps=400, save_every=20))
    wait_for(lambda: run.checkpoints.filter(step=40).exists(), 60, what="the second checkpoint's row")
    job.refresh_from_db()
    assert job.status == Job.RUNNING  # recorded by the job itself, not by a later scan
    recipes.wait_for_job(job, Job.FINISHED, timeout=120)


def test_max_to_keep_deletions_become_pruned_rows_with_a_note(worker, run, operator_client):
    job = start_from_page(operator_client, run, steps=60, save_every=10, max_to_keep=2)
    recipes.wait_for_job(job, Job.FINISHED)

    status = dict(run.checkpoints.values_list("step", "status"))
    assert status == {10: "pruned", 20: "pruned", 30: "pruned", 40: "pruned", 50: "present", 60: "present"}
    pruned = run.checkpoints.get(step=10)
    assert pruned.problems and "max_to_keep=2" in pruned.problems[0] and f"#{job.pk}" in pruned.problems[0]
    assert not os.path.exists(os.path.join(run.directory, "model.ckpt-10.index"))
    event = AuditEvent.objects.filter(run=run, action="saver_pruned").order_by("at").first()
    assert event.bytes_freed > 0 and event.details["deleted"] == ["model.ckpt-10"]
    assert job.result["pruned_by_saver"] == ["model.ckpt-10", "model.ckpt-20", "model.ckpt-30", "model.ckpt-40"]
    agree_with_tensorflow(run)


def test_continue_training_from_an_existing_checkpoint(worker, run, operator_client):
    first = start_from_page(operator_client, run, steps=20, save_every=10, write_meta_graph="first")
    recipes.wait_for_job(first, Job.FINISHED)
    assert run.checkpoints.get(step=20).meta_source == run.checkpoints.get(step=10)  # write_meta_graph first
    start = run.checkpoints.get(step=20)

    job = start_from_page(operator_client, run, steps=15, save_every=10, restore_from=str(start.pk))
    recipes.wait_for_job(job, Job.FINISHED)

    assert job.checkpoint == start and job.result["restored_from"] == "model.ckpt-20"
    assert sorted(run.checkpoints.values_list("step", flat=True)) == [10, 20, 30, 35]
    reader = tf().train.load_checkpoint(os.path.join(run.directory, "model.ckpt-35"))
    assert int(reader.get_tensor("global_step")) == 35
    assert job.result["initial_metrics"]["loss"] == pytest.approx(start.metrics["loss"], rel=1e-5)
    agree_with_tensorflow(run)


def test_var_list_rename_map_saves_the_named_variables_under_new_names(worker, run, operator_client):
    job = start_from_page(
        operator_client, run, steps=10, save_every=10, var_list_mode="rename",
        rename_map="dense/w=hidden/kernel\ndense/b=hidden/bias\nglobal_step=global_step",
    )
    recipes.wait_for_job(job, Job.FINISHED)

    names = [name for name, _ in tf().train.list_variables(os.path.join(run.directory, "model.ckpt-10"))]
    assert sorted(names) == ["dense/b", "dense/w", "global_step"]
    assert sorted(v["name"] for v in run.checkpoints.get(step=10).variables) == sorted(names)


def test_unknown_variable_the_form_cannot_know_fails_the_job_listing_valid_names(worker, run, operator_client):
    # A fresh run has no recorded variables, so only the job (which builds the graph) can tell.
    job = start_from_page(operator_client, run, var_list_mode="names", var_names="hidden/kernel\nnot/there")
    recipes.wait_for_job(job, Job.FAILED)
    assert "unknown variable names in var_list: not/there" in job.error
    assert "hidden/kernel" in job.error.split("Valid names:")[1]


# --- the form -------------------------------------------------------------------------------


def test_save_form_renders_recipes_and_continue_choices(operator_client, run):
    recipes_rows = [Checkpoint(run=run, prefix=f"model.ckpt-{s}", step=s, saved_at="2026-01-01T00:00Z") for s in (5, 9)]
    Checkpoint.objects.bulk_create(recipes_rows)
    html = operator_client.get(reverse("run-save", args=[run.name])).content.decode()
    assert "antispam" in html and recipes.SLOW in html
    assert "model.ckpt-9 (step 9)" in html and "Nothing: start from fresh weights" in html


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"steps": "0"}, "steps", "greater than or equal to 1"),
        ({"save_every": "0"}, "save_every", "greater than or equal to 1"),
        ({"prefix": "sub/model.ckpt"}, "prefix", "plain file name"),
        ({"prefix": "checkpoint"}, "prefix", "state file"),
        ({"max_to_keep": "-1"}, "max_to_keep", "greater than or equal to 0"),
        ({"max_to_keep": str(10**20)}, "max_to_keep", "less than or equal to 1000000"),
        ({"prefix": "sub\\model.ckpt"}, "prefix", "without directories (/ or \\)"),
        ({"prefix": "..\\..\\model.ckpt"}, "prefix", "plain file name"),
        ({"prefix": ".."}, "prefix", "plain file name"),
        ({"prefix": ".hidden"}, "prefix", "does not start with a dot"),
        ({"prefix": "model\x07ckpt"}, "prefix", "control characters"),
        ({"var_list_mode": "names"}, "var_names", "Enter the names of the variables to save"),
        ({"var_list_mode": "rename", "rename_map": "just_a_name"}, "rename_map", "new_name=variable_name"),
        ({"recipe": "os.system"}, "recipe", "Select a valid choice"),
    ],
)
def test_save_form_shows_inline_errors(operator_client, run, overrides, field, message):
    response = operator_client.post(reverse("run-save", args=[run.name]), form_data(**overrides))
    assert response.status_code == 200
    form = response.context["form"]
    assert any(message in e for e in form.errors[field]), form.errors
    assert 'role="alert"' in response.content.decode()
    assert not Job.objects.exists()


def test_save_form_lists_unknown_variable_names_recorded_on_the_run(operator_client, run):
    Checkpoint.objects.create(
        run=run, prefix="model.ckpt-5", step=5, saved_at="2026-01-01T00:00Z",
        variables=[{"name": "hidden/kernel", "shape": [2, 2], "dtype": "float32", "bytes": 16}],
    )
    response = operator_client.post(
        reverse("run-save", args=[run.name]), form_data(var_list_mode="names", var_names="hidden/kernel:0, typo/a, typo/b")
    )
    [error] = response.context["form"].errors["var_names"]
    assert error.startswith("Unknown variable names: typo/a, typo/b.") and "hidden/kernel" in error


def test_save_form_refuses_to_write_over_recorded_checkpoints(operator_client, run):
    Checkpoint.objects.create(run=run, prefix="model.ckpt-20", step=20, saved_at="2026-01-01T00:00Z")
    response = operator_client.post(reverse("run-save", args=[run.name]), form_data(steps=30, save_every=10))
    [error] = response.context["form"].errors["prefix"]
    assert "already holds model.ckpt-20" in error
    # Another prefix, or steps that never land on 20, are fine.
    assert operator_client.post(reverse("run-save", args=[run.name]), form_data(prefix="other")).status_code == 302


def test_viewers_get_no_train_button_and_403(client, viewer, run):
    client.force_login(viewer)
    assert reverse("run-save", args=[run.name]) not in client.get(run.get_absolute_url()).content.decode()
    assert client.get(reverse("run-save", args=[run.name])).status_code == 403
    assert client.post(reverse("run-save", args=[run.name]), form_data()).status_code == 403
    assert not Job.objects.exists()


# --- re-save a subset -----------------------------------------------------------------------


@pytest.fixture
def demo_run(run) -> Run:
    """The demo checkpoint: the anti-spam recipe with Adam, saved the seed's way."""
    from persistence.training import make_demo_run

    make_demo_run(run.directory, steps=50, save_every=25)
    scanning.scan(run)
    return run


def test_drop_optimizer_slots_in_one_click_keeps_weights_and_is_smaller(worker, demo_run, operator_client):
    source = demo_run.checkpoints.get(step=50)
    page = operator_client.get(source.get_absolute_url()).content.decode()
    assert "Drop optimizer slots" in page and source.slim_prefix == "model.ckpt-slim-50"

    response = operator_client.post(
        reverse("checkpoint-resave", args=[demo_run.name, source.pk]),
        {"mode": "drop_slots", "new_prefix": source.slim_prefix},
    )
    assert response.status_code == 302
    job = recipes.wait_for_job(Job.objects.get(checkpoint=source), Job.FINISHED)

    slim = demo_run.checkpoints.get(prefix="model.ckpt-slim-50")
    assert slim.source == source and slim.step == 50 and job.result["checkpoint_id"] == slim.pk
    original = tf().train.load_checkpoint(source.path)
    copy = tf().train.load_checkpoint(slim.path)
    kept = set(copy.get_variable_to_shape_map())
    assert kept == {"global_step", "hidden/bias", "hidden/kernel", "output/bias", "output/kernel"}
    for name in kept:
        np.testing.assert_array_equal(copy.get_tensor(name), original.get_tensor(name))

    def on_disk(prefix: str) -> int:
        return sum(
            os.path.getsize(os.path.join(demo_run.directory, n))
            for n in os.listdir(demo_run.directory) if n.startswith(prefix + ".")
        )

    assert on_disk("model.ckpt-slim-50") < on_disk("model.ckpt-50") / 2
    assert slim.size_bytes == on_disk("model.ckpt-slim-50")
    # The state file still names the training's latest checkpoint.
    assert os.path.basename(tf().train.latest_checkpoint(demo_run.directory)) == "model.ckpt-50"


def test_resave_chosen_variables_with_a_rename_map(worker, demo_run, operator_client):
    source = demo_run.checkpoints.get(step=25)
    response = operator_client.post(
        reverse("checkpoint-resave", args=[demo_run.name, source.pk]),
        {"mode": "choose", "variables": ["hidden/kernel", "hidden/bias"], "rename_map": "encoder/kernel=hidden/kernel",
         "new_prefix": "transfer-25"},
    )
    assert response.status_code == 302
    recipes.wait_for_job(Job.objects.get(checkpoint=source), Job.FINISHED)

    copy = tf().train.load_checkpoint(os.path.join(demo_run.directory, "transfer-25"))
    assert sorted(copy.get_variable_to_shape_map()) == ["encoder/kernel", "hidden/bias"]
    original = tf().train.load_checkpoint(source.path)
    np.testing.assert_array_equal(copy.get_tensor("encoder/kernel"), original.get_tensor("hidden/kernel"))
    assert demo_run.checkpoints.get(prefix="transfer-25").source == source


def test_retried_resave_records_the_copy_an_earlier_attempt_wrote_instead_of_failing(worker, demo_run):
    from persistence.training import resave_subset

    source = demo_run.checkpoints.get(step=50)
    params = {"mode": "resave", "new_prefix": "slim-50", "variables": None, "drop_optimizer_slots": True,
              "rename": {}}
    killed = Job.objects.create(kind=Job.SAVE, run=demo_run, checkpoint=source, params=params,
                                status=Job.FAILED, error="killed")
    # What the killed attempt got done: the files, but not the row.
    resave_subset(source.path, demo_run.directory, "slim-50", drop_optimizer_slots=True)
    assert not demo_run.checkpoints.filter(prefix="slim-50").exists()

    retry = recipes.wait_for_job(jobs.retry_job(killed, make_user("ola-operator", "operator")), [Job.FINISHED, Job.FAILED])

    assert retry.status == Job.FINISHED, retry.error
    assert "already written by an earlier attempt" in retry.log[-1]
    slim = demo_run.checkpoints.get(prefix="slim-50")
    assert slim.source == source and slim.variable_count == 5


def test_retried_resave_never_deletes_a_meta_graph_it_did_not_write(worker, demo_run):
    source = demo_run.checkpoints.get(step=50)
    params = {"mode": "resave", "new_prefix": "slim-50", "variables": None, "drop_optimizer_slots": True,
              "rename": {}}
    killed = Job.objects.create(kind=Job.SAVE, run=demo_run, checkpoint=source, params=params,
                                status=Job.FAILED, error="killed")
    # A data shard the killed attempt moved in, and a .meta under the same prefix that it did not
    # write (a re-save never writes one): another checkpoint's meta graph, kept for later ones.
    shard = os.path.join(demo_run.directory, "slim-50.data-00000-of-00001")
    meta = os.path.join(demo_run.directory, "slim-50.meta")
    shutil.copyfile(source.path + ".data-00000-of-00001", shard)
    shutil.copyfile(os.path.join(demo_run.directory, "model.ckpt-25.meta"), meta)

    retry = recipes.wait_for_job(jobs.retry_job(killed, make_user("oleg-operator", "operator")), [Job.FINISHED, Job.FAILED])

    assert retry.status == Job.FAILED and "did not write (slim-50.meta)" in retry.error
    assert os.path.exists(meta)


def test_resave_form_errors_are_inline(operator_client, run):
    source = Checkpoint.objects.create(
        run=run, prefix="model.ckpt-5", step=5, saved_at="2026-01-01T00:00Z",
        variables=[{"name": n, "shape": [1], "dtype": "float32", "bytes": 4} for n in ("a", "b")],
    )
    Checkpoint.objects.create(run=run, prefix="taken", step=None, saved_at="2026-01-01T00:00Z")
    url = reverse("checkpoint-resave", args=[run.name, source.pk])

    html = operator_client.get(url).content.decode()
    assert "model.ckpt-slim-5" in html and 'value="a"' in html

    errors = operator_client.post(url, {"mode": "choose", "new_prefix": "taken"}).context["form"].errors
    assert "already exists" in errors["new_prefix"][0]
    assert "Tick at least one variable" in errors["variables"][0]
    errors = operator_client.post(
        url, {"mode": "choose", "variables": ["a"], "rename_map": "x=b", "new_prefix": "ok"}
    ).context["form"].errors
    assert errors["rename_map"][0].startswith("Unknown variable name: b.")
    assert operator_client.post(url, {"mode": "nonsense", "new_prefix": "ok"}).status_code == 200
    assert not Job.objects.exists()
