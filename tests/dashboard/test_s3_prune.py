"""Pruning and make-latest on runs in a bucket: the same plan, reasons, protection, audit and
refusals as for local runs, through the pages, a real worker and the periodic sweep.

Real TensorFlow checkpoints are uploaded by boto3 to the loopback S3 server; what is left in the
bucket is downloaded again and read by TensorFlow itself.
"""

from __future__ import annotations

import os

import pytest
from django.urls import reverse

from dashboard import artifacts, jobs, locks, pruning, retention, scanning
from dashboard.jobs.scan import scan_all_runs
from dashboard.models import AuditEvent, Checkpoint, Job, Run
from persistence.statefile import parse_state_bytes
from tests import checkpoint_factory as factory
from tests.live import run_jobs_to_completion
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

pytestmark = [pytest.mark.tf]


@pytest.fixture
def s3_root(s3_bucket, settings, checkpoint_root):
    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    return s3_bucket


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seed")
    factory.make_seed_run(directory, steps=(100, 200, 300, 400))
    return directory


@pytest.fixture
def s3_run(db, s3_root, seed_dir):
    s3_root.upload_directory(seed_dir, "runs/seed")
    run = Run.objects.create(name="seed", directory=s3_root.url("runs/seed"), max_to_keep=1, min_age_seconds=0)
    scanning.scan(run)
    return run


def _names(bucket) -> set[str]:
    return {key.rsplit("/", 1)[1] for key in bucket.keys("runs/seed/")}


def _in_run(bucket) -> set[str]:
    """The objects directly in the run's prefix (not its trash)."""
    return {key.rsplit("/", 1)[1] for key in bucket.keys("runs/seed/") if "/" not in key[len("runs/seed/"):]}


def _state(bucket, name: str = "checkpoint"):
    return parse_state_bytes(bucket.get(f"runs/seed/{name}"), name, "s3://x/runs/seed")


def _download(bucket, target) -> str:
    os.makedirs(target, exist_ok=True)
    for key in bucket.keys("runs/seed/"):
        with open(os.path.join(target, key.rsplit("/", 1)[1]), "wb") as handle:
            handle.write(bucket.get(key))
    return str(target)


def _assert_no_credentials(text: str, where: str) -> None:
    assert FAKE_SECRET not in text, f"the secret key appears in {where}"
    assert FAKE_KEY_ID not in text, f"the access key id appears in {where}"


@pytest.mark.django_db(transaction=True)
def test_prune_now_deletes_exactly_the_previewed_objects_and_keeps_what_is_protected(
        client, maintainer, s3_run, s3_root, seed_dir, tmp_path):
    import tensorflow as tf

    pinned = s3_run.checkpoints.get(prefix="model.ckpt-200")
    pruning.pin(pinned, "the release candidate", actor=maintainer)
    client.force_login(maintainer)
    page = client.get(reverse("run-prune", args=[s3_run.name]))
    assert page.status_code == 200 and "not yet supported" not in page.content.decode()
    plan = retention.plan_retention(s3_run)
    assert page.context["plan"].fingerprint == plan.fingerprint
    assert plan.files_to_delete and "model.ckpt-100.meta" not in plan.files_to_delete  # 200's to 400's meta source
    assert not {"model.ckpt-200", "model.ckpt-400", "subset.ckpt-400"} & plan.deleted_prefixes
    before = _names(s3_root)

    response = client.post(reverse("run-prune-now", args=[s3_run.name]), {"fingerprint": plan.fingerprint})
    job = Job.objects.get(kind=Job.PRUNE)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    assert job.result["plan"] == plan.to_dict()  # the job executed the plan the user saw
    assert _names(s3_root) == before - set(plan.files_to_delete)
    assert {"model.ckpt-100.meta", "checkpoint", "subset_checkpoint"} <= _names(s3_root)
    pruned = set(s3_run.checkpoints.filter(status=Checkpoint.PRUNED).values_list("prefix", flat=True))
    assert pruned == plan.deleted_prefixes
    event = AuditEvent.objects.get(action="prune")
    assert event.bytes_freed == plan.bytes_freed and event.details["job"] == job.pk
    assert event.details["execution"]["measured_bytes_freed"] == sum(
        os.path.getsize(seed_dir / n) for n in plan.files_to_delete)
    assert sorted(event.details["execution"]["state_files"]) == ["checkpoint", "subset_checkpoint"]

    copy = _download(s3_root, tmp_path / "copy")
    for state_file, newest in [("checkpoint", "model.ckpt-400"), ("subset_checkpoint", "subset.ckpt-400")]:
        state = tf.train.get_checkpoint_state(copy, latest_filename=state_file)
        assert state.model_checkpoint_path == os.path.join(copy, newest)
        listed = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
        assert not set(listed) & plan.deleted_prefixes
        assert all(os.path.exists(p + ".index") for p in state.all_model_checkpoint_paths)
    assert tf.train.latest_checkpoint(copy) == os.path.join(copy, "model.ckpt-400")

    scanning.scan(s3_run)  # a rescan after the prune leaves the pruned rows pruned
    assert set(s3_run.checkpoints.filter(status=Checkpoint.PRUNED).values_list("prefix", flat=True)) == pruned
    for where, url in [("the job page", job.get_absolute_url()), ("the run page", reverse("run", args=[s3_run.name])),
                       ("the audit page", reverse("audit")), ("the prune page", reverse("run-prune", args=[s3_run.name]))]:
        _assert_no_credentials(client.get(url).content.decode(), where)
    _assert_no_credentials(repr(Job.objects.filter(pk=job.pk).values().get()), "the job record")
    _assert_no_credentials(repr(event.details), "the audit event")


@pytest.mark.django_db(transaction=True)
def test_make_latest_in_a_bucket_rolls_back_and_a_prune_then_keeps_it(client, maintainer, s3_run, s3_root, tmp_path):
    import tensorflow as tf

    older = s3_run.checkpoints.get(prefix="model.ckpt-200")
    client.force_login(maintainer)
    response = client.post(reverse("checkpoint-make-latest", args=[s3_run.name, older.pk]), follow=True)
    html = response.content.decode()
    assert "model.ckpt-200 is now the latest checkpoint (was model.ckpt-400)" in html, html[:3000]
    _assert_no_credentials(html, "the checkpoint page")

    state = _state(s3_root)
    assert state.latest == "model.ckpt-200"
    assert state.all_prefixes == [f"model.ckpt-{s}" for s in (100, 200, 300, 400)]  # order kept
    assert tf.train.latest_checkpoint(_download(s3_root, tmp_path / "copy")).endswith("model.ckpt-200")
    assert Checkpoint.objects.get(pk=older.pk).latest_in == ["checkpoint"]
    assert Run.objects.get(pk=s3_run.pk).latest_prefix == "model.ckpt-200"
    event = AuditEvent.objects.get(action="make_latest")
    assert event.checkpoint_id == older.pk and event.actor == maintainer

    plan = retention.plan_retention(Run.objects.get(pk=s3_run.pk))
    assert "model.ckpt-200" not in plan.deleted_prefixes
    assert any(r.startswith("kept: latest") for d in plan.decisions if d.prefix == "model.ckpt-200" for r in d.reasons)


def test_make_latest_waits_for_a_running_prune_of_a_bucket_run(s3_run, s3_root, maintainer):
    holder = Job.objects.create(kind=Job.PRUNE, run=s3_run, status=Job.RUNNING,
                                result={"holder": {"pid": os.getpid()}})
    before = s3_root.get("runs/seed/checkpoint")
    with locks.run_lock(s3_run), pytest.raises(ValueError, match=f"A prune of run seed is running \\(job #{holder.pk}\\)"):
        artifacts.make_latest(s3_run, s3_run.checkpoints.get(prefix="model.ckpt-100"), user=maintainer)
    assert s3_root.get("runs/seed/checkpoint") == before
    with locks.run_lock(s3_run), pytest.raises(Run.PruneRefused, match="Another prune of run seed is running"):
        pruning.prune(s3_run, Job.objects.create(kind=Job.PRUNE, run=s3_run))
    assert s3_root.get("runs/seed/checkpoint") == before


def test_a_killed_prune_of_a_bucket_run_is_finished_by_its_retry_unless_protected_since(s3_run, s3_root):
    plan = retention.plan_retention(s3_run)
    killed = Job.objects.create(kind=Job.PRUNE, run=s3_run, status=Job.FAILED,
                                result={"plan": plan.to_dict(), "policy": None})
    # It got as far as the .index objects of the first checkpoint.
    s3_root.delete("runs/seed/model.ckpt-100.index")
    expected = _names(s3_root) - set(plan.files_to_delete)

    # Pinned after the kill: the retry must not finish deleting it.
    protected = s3_run.checkpoints.get(prefix="model.ckpt-300")
    assert "model.ckpt-300" in plan.deleted_prefixes
    pruning.pin(protected, "needed after all")
    refused = Job.objects.create(kind=Job.PRUNE, run=s3_run, retry_of=killed)
    with pytest.raises(Run.PruneRefused, match="model.ckpt-300"):
        pruning.prune(s3_run, refused)
    assert "model.ckpt-300.index" in _names(s3_root)

    pruning.unpin(protected)
    retry = Job.objects.create(kind=Job.PRUNE, run=s3_run, retry_of=killed)
    result = pruning.prune(s3_run, retry)
    assert result["resumed_from"] == killed.pk
    assert result["execution"]["already_gone"] == ["model.ckpt-100.index"]
    assert _names(s3_root) == expected
    assert set(s3_run.checkpoints.filter(status=Checkpoint.PRUNED).values_list("prefix", flat=True)) == (
        plan.deleted_prefixes)


def test_an_edited_plan_naming_a_state_file_or_an_unrecorded_file_deletes_nothing(s3_run, s3_root):
    import dataclasses

    plan = retention.plan_retention(s3_run)
    keys = s3_root.keys()
    for extra in ("subset_checkpoint", "events.out.tfevents.1", "../other/model.ckpt-400.index"):
        decisions = list(plan.decisions)
        i = next(i for i, d in enumerate(decisions) if not d.keep)
        decisions[i] = dataclasses.replace(decisions[i], delete_files=[*decisions[i].delete_files, extra])
        edited = dataclasses.replace(plan, decisions=decisions, files_to_delete=sorted([*plan.files_to_delete, extra]))
        with pytest.raises(ValueError, match="no recorded checkpoint|state file|not a file name"):
            pruning.apply_plan(s3_run, edited)
        assert s3_root.keys() == keys


@pytest.mark.django_db(transaction=True)
def test_the_periodic_sweep_auto_prunes_a_bucket_run_that_turns_it_on(s3_run, s3_root):
    Run.objects.filter(pk=s3_run.pk).update(auto_prune=True)
    plan = retention.plan_retention(Run.objects.get(pk=s3_run.pk))
    assert plan.files_to_delete
    before = _names(s3_root)

    summary = scan_all_runs()
    prune = Job.objects.get(kind=Job.PRUNE)
    assert summary["seed"]["auto_prune_job"] == prune.pk and prune.params == {"auto": True}
    run_jobs_to_completion()

    prune.refresh_from_db()
    assert prune.status == Job.FINISHED, prune.error
    assert _names(s3_root) == before - set(plan.files_to_delete)
    assert AuditEvent.objects.get(action="prune").summary.startswith("Auto-prune of seed:")
    # Nothing left to delete: the next sweep starts no empty prune.
    again = scan_all_runs()
    assert "auto_prune_job" not in again["seed"] and Job.objects.filter(kind=Job.PRUNE).count() == 1


def test_starting_a_prune_job_for_a_bucket_run_is_accepted(s3_run):
    job = jobs.start(Job.PRUNE, run=s3_run, params={"overrides": {"max_to_keep": 2}})
    assert job.status == Job.QUEUED


@pytest.mark.django_db(transaction=True)
def test_a_prune_into_the_trash_of_a_bucket_run_is_restored_and_emptied(client, maintainer, s3_run, s3_root, settings):
    """TRASH_DAYS on a bucket run: the objects go under ``.trash/<batch>/``, a maintainer brings
    them back from the prune page (a scan marks them present), and emptying removes only the trash."""
    import io
    import json

    from django.core.management import call_command

    settings.TRASH_DAYS = 7
    plan = retention.plan_retention(s3_run)
    assert plan.files_to_delete
    before = _in_run(s3_root)
    out = io.StringIO()
    call_command("prune", s3_run.name, "--json", stdout=out)
    batch = json.loads(out.getvalue())["execution"]["trash_batch"]
    assert batch

    trashed = {key.rsplit("/", 1)[1] for key in s3_root.keys(f"runs/seed/.trash/{batch}/")}
    assert set(plan.files_to_delete) <= trashed
    assert _in_run(s3_root) == before - set(plan.files_to_delete)
    assert {c.prefix for c in s3_run.checkpoints.filter(status=Checkpoint.PRUNED)} == plan.deleted_prefixes
    assert _state(s3_root).latest == "model.ckpt-400"
    # A scan of the run does not see the trash.
    assert scanning.scan(s3_run, full=True)["created"] == 0

    client.force_login(maintainer)
    page = client.get(reverse("run-prune", args=[s3_run.name])).content.decode()
    restore = reverse("run-trash-restore", args=[s3_run.name, batch])
    assert restore in page
    _assert_no_credentials(page, "the prune page")
    response = client.post(restore, follow=True)
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "Restored" in shown, shown
    _assert_no_credentials(shown, "the restore message")
    assert _in_run(s3_root) == before
    assert s3_root.keys(f"runs/seed/.trash/{batch}/") == []
    scanning.scan(s3_run, full=True)
    assert not s3_run.checkpoints.filter(status=Checkpoint.PRUNED).exists()

    # Pruned into the trash again, then emptied: only the trash goes.
    call_command("prune", s3_run.name, "--json", stdout=io.StringIO())
    call_command("empty_trash", s3_run.name, "--days", "0", stdout=io.StringIO())
    assert [k for k in s3_root.keys("runs/seed/") if "/.trash/" in k and not k.endswith("/")] == []
    assert _in_run(s3_root) == before - set(plan.files_to_delete)
    event = AuditEvent.objects.filter(action="trash-empty").latest("pk")
    assert event.bytes_freed > 0
