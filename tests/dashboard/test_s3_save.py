"""Save jobs and partial restore on a run in a bucket, against the loopback S3 server.

A save trains in a local working directory and uploads each checkpoint; the bucket is then read
back with boto3 and, downloaded, with TensorFlow's own ``get_checkpoint_state`` /
``latest_checkpoint``. Jobs run in a real worker process.
"""

from __future__ import annotations

import os
import shutil

import pytest
from django.urls import reverse

from dashboard import artifacts, jobs, scanning
from dashboard.models import Checkpoint, Job, Run
from persistence import statefile
from tests.dashboard import job_recipes as recipes
from tests.live import LiveWorker
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

RECIPES = [*recipes.ALL, recipes.STATE_REWRITING, recipes.FAILING_MIDWAY]
ROW_FIELDS = ("prefix", "step", "status", "format", "files", "has_own_meta", "meta_source__prefix", "size_bytes",
              "variables", "saved_at", "fingerprint", "latest_in", "problems", "pinned", "metrics")


def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The anti-spam recipe saved at steps 25 and 50 (only the first with a .meta)."""
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


@pytest.fixture
def bucket_run(s3_bucket, settings, checkpoint_root, demo_dir, tmp_path) -> Run:
    settings.CHECKPOINT_OBJECT_ROOTS = [s3_bucket.url("runs")]
    settings.STAGING_CACHE_DIR = tmp_path / "stage"
    settings.EXPORT_ROOT = tmp_path / "exports"
    settings.CHECKPOINT_RECIPES = RECIPES
    recipes.ensure_roles()
    s3_bucket.upload_directory(demo_dir, "runs/demo")
    run = Run.objects.create(name="demo", directory=s3_bucket.url("runs/demo"))
    scanning.scan(run)
    return run


def run_worker(tmp_path, settings, **env) -> str:
    """Run every queued job in a real worker process; return its log."""
    log = tmp_path / "worker.log"
    worker = LiveWorker(burst=True, log_path=log, STAGING_CACHE_DIR=str(settings.STAGING_CACHE_DIR),
                        CHECKPOINT_RECIPES=",".join(RECIPES), **env).start()
    try:
        assert worker.wait(300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        worker.stop()
    return log.read_text(errors="replace")


def no_credentials(text: str, where: str) -> None:
    assert FAKE_SECRET not in text, f"the secret key appears in {where}"
    assert FAKE_KEY_ID not in text, f"the access key id appears in {where}"


def bucket_state(bucket) -> statefile.StateFile:
    return statefile.parse_state_bytes(bucket.get("runs/demo/checkpoint"), "checkpoint", bucket.url("runs/demo"))


def download(bucket, local) -> None:
    local.mkdir()
    for key in bucket.keys("runs/demo/"):
        (local / key.rsplit("/", 1)[-1]).write_bytes(bucket.get(key))


def rows(run: Run) -> list[dict]:
    return list(run.checkpoints.order_by("prefix").values(*ROW_FIELDS))


def test_save_on_a_bucket_run_uploads_merges_the_state_and_deletes_nothing(
        bucket_run, s3_bucket, client, operator, tmp_path, settings):
    old = bucket_run.checkpoints.get(prefix="model.ckpt-25")
    old.pinned, old.pin_reason = True, "baseline"
    old.save(update_fields=["pinned", "pin_reason"])
    before = set(s3_bucket.keys())
    listed_before = bucket_state(s3_bucket).all_prefixes
    assert listed_before == ["model.ckpt-50"]  # max_to_keep=None: TensorFlow lists only the latest
    client.force_login(operator)
    page = client.get(reverse("run-save", args=[bucket_run.name])).content.decode()
    assert "Nothing in the bucket is deleted by a save" in page

    # Continue from step 50 with max_to_keep=1: the Saver would rotate out everything but the last.
    response = client.post(reverse("run-save", args=[bucket_run.name]), {
        "recipe": recipes.BUILT_IN, "steps": 30, "save_every": 10,
        "restore_from": bucket_run.checkpoints.get(prefix="model.ckpt-50").pk, "prefix": "model.ckpt",
        "max_to_keep": "1", "keep_checkpoint_every_n_hours": "10000", "write_meta_graph": "first",
        "var_list_mode": "all", "var_names": "", "rename_map": "",
    })
    job = Job.objects.get(kind=Job.SAVE)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    log = run_worker(tmp_path, settings)
    job.refresh_from_db()
    assert job.status == Job.FINISHED, (job.error, job.traceback)
    assert job.result["restored_from"] == "model.ckpt-50" and job.result["start_step"] == 50
    assert [s["prefix"] for s in job.result["saved"]] == ["model.ckpt-60", "model.ckpt-70", "model.ckpt-80"]
    assert job.result["rotated_in_working_directory"] == ["model.ckpt-60", "model.ckpt-70"]
    assert job.result["pruned_by_saver"] == [] and job.result["directory"] == bucket_run.directory

    after = set(s3_bucket.keys())
    assert before <= after, f"objects deleted: {sorted(before - after)}"
    assert after - before == {
        "runs/demo/model.ckpt-60.index", "runs/demo/model.ckpt-60.data-00000-of-00001", "runs/demo/model.ckpt-60.meta",
        "runs/demo/model.ckpt-70.index", "runs/demo/model.ckpt-70.data-00000-of-00001",
        "runs/demo/model.ckpt-80.index", "runs/demo/model.ckpt-80.data-00000-of-00001",
    }
    state = bucket_state(s3_bucket)
    assert state.latest == "model.ckpt-80"
    assert state.all_prefixes == [*listed_before, "model.ckpt-60", "model.ckpt-70", "model.ckpt-80"]

    local = tmp_path / "downloaded"
    download(s3_bucket, local)
    tf_state = tf().train.get_checkpoint_state(str(local))
    assert [os.path.basename(p) for p in tf_state.all_model_checkpoint_paths] == state.all_prefixes
    assert tf().train.latest_checkpoint(str(local)) == str(local / "model.ckpt-80")
    restored = dict(tf().train.list_variables(str(local / "model.ckpt-80")))
    assert int(tf().train.load_checkpoint(str(local / "model.ckpt-80")).get_tensor("global_step")) == 80
    assert "hidden/kernel" in restored

    recorded = {c.prefix: c for c in bucket_run.checkpoints.all()}
    assert sorted(recorded) == [f"model.ckpt-{s}" for s in (25, 50, 60, 70, 80)]
    assert all(c.status == Checkpoint.PRESENT for c in recorded.values())
    assert recorded["model.ckpt-25"].pinned
    assert recorded["model.ckpt-80"].latest_in == ["checkpoint"] and recorded["model.ckpt-50"].latest_in == []
    assert recorded["model.ckpt-80"].meta_source.prefix == "model.ckpt-60"
    assert isinstance(recorded["model.ckpt-80"].metrics.get("loss"), float)
    bucket_run.refresh_from_db()
    assert bucket_run.latest_prefix == "model.ckpt-80"

    # What the job recorded is what a scan of the bucket finds.
    saved_rows = rows(bucket_run)
    scanning.scan(bucket_run)
    assert rows(bucket_run) == saved_rows

    no_credentials(repr(Job.objects.filter(pk=job.pk).values().get()), "the job record")
    no_credentials(client.get(job.get_absolute_url()).content.decode(), "the job page")
    no_credentials(log, "the worker log")
    assert not os.listdir(settings.STAGING_CACHE_DIR / "saves")  # the working directory went with the job


def test_a_trainer_rewriting_the_state_object_during_the_save_is_not_reverted(
        bucket_run, s3_bucket, tmp_path, settings, demo_dir):
    # Another trainer's checkpoint, not yet listed: it lists it while the job trains.
    for suffix in (".index", ".data-00000-of-00001"):
        s3_bucket.put(f"runs/demo/other.ckpt-5{suffix}", (demo_dir / f"model.ckpt-25{suffix}").read_bytes())
    params = recipes.save_params(recipes.STATE_REWRITING, steps=20, save_every=10, prefix="job.ckpt")
    job = jobs.start(Job.SAVE, run=bucket_run, params=params)
    run_worker(tmp_path, settings, STATE_REWRITE_URL=s3_bucket.url("runs/demo/checkpoint"),
               STATE_REWRITE_AT="15", STATE_REWRITE_PREFIX="other.ckpt-5")
    job.refresh_from_db()
    assert job.status == Job.FINISHED, (job.error, job.traceback)
    state = bucket_state(s3_bucket)
    # The trainer's save came between the job's two: both its entry and the job's first stay.
    assert state.all_prefixes == ["model.ckpt-50", "job.ckpt-10", "other.ckpt-5", "job.ckpt-20"]
    assert state.latest == "job.ckpt-20"
    local = tmp_path / "downloaded"
    download(s3_bucket, local)
    assert tf().train.latest_checkpoint(str(local)) == str(local / "job.ckpt-20")
    scanning.scan(bucket_run)
    assert bucket_run.checkpoints.get(prefix="other.ckpt-5").status == Checkpoint.PRESENT
    assert bucket_run.checkpoints.get(prefix="job.ckpt-20").latest_in == ["checkpoint"]


def test_a_retried_save_continues_from_what_the_failed_attempt_uploaded(
        bucket_run, s3_bucket, tmp_path, settings, operator):
    from dashboard.jobs.actions import retry_job

    marker = tmp_path / "fail.marker"
    marker.write_text("fail once")
    params = recipes.save_params(recipes.FAILING_MIDWAY, steps=30, save_every=10, prefix="job.ckpt")
    failed = jobs.start(Job.SAVE, run=bucket_run, params=params, user=operator)
    env = {"MIDWAY_FAIL_MARKER": str(marker), "MIDWAY_FAIL_AT": "15"}
    run_worker(tmp_path, settings, **env)
    failed.refresh_from_db()
    assert failed.status == Job.FAILED and "failing midway" in failed.error
    assert [s["prefix"] for s in failed.result["saved"]] == ["job.ckpt-10"]
    first_upload = s3_bucket.get("runs/demo/job.ckpt-10.index")

    retry = retry_job(failed, operator)
    run_worker(tmp_path, settings, **env)
    retry.refresh_from_db()
    assert retry.status == Job.FINISHED, (retry.error, retry.traceback)
    assert retry.result["resumed_from"] == "job.ckpt-10" and retry.result["start_step"] == 10
    assert [s["prefix"] for s in retry.result["saved"]] == ["job.ckpt-20", "job.ckpt-30"]
    assert s3_bucket.get("runs/demo/job.ckpt-10.index") == first_upload  # continued from, not rewritten
    state = bucket_state(s3_bucket)
    assert state.all_prefixes == ["model.ckpt-50", "job.ckpt-10", "job.ckpt-20", "job.ckpt-30"]
    saved_rows = rows(bucket_run)
    scanning.scan(bucket_run)
    assert rows(bucket_run) == saved_rows


def test_a_save_refuses_to_write_over_a_checkpoint_in_the_bucket(bucket_run, s3_bucket, tmp_path, settings):
    before = {key: s3_bucket.get(key) for key in s3_bucket.keys()}
    params = recipes.save_params(recipes.BUILT_IN, steps=50, save_every=25)  # model.ckpt-25 and -50 exist
    job = jobs.start(Job.SAVE, run=bucket_run, params=params)
    run_worker(tmp_path, settings)
    job.refresh_from_db()
    assert job.status == Job.FAILED
    assert "model.ckpt-25" in job.error and bucket_run.directory in job.error
    assert str(settings.STAGING_CACHE_DIR) not in job.error
    assert {key: s3_bucket.get(key) for key in s3_bucket.keys()} == before


PARTIAL = {"variables": ["hidden/kernel", "hidden/bias", "output/bias"], "name_map": {"output/bias": "hidden/bias"}}


def test_partial_restore_of_a_bucket_checkpoint_equals_the_local_one(
        bucket_run, demo_dir, checkpoint_root, client, operator):
    shutil.copytree(demo_dir, checkpoint_root / "demo")
    local_run = Run.objects.create(name="local", directory=str(checkpoint_root / "demo"))
    scanning.scan(local_run)
    remote = bucket_run.checkpoints.select_related("run").get(prefix="model.ckpt-50")
    local = local_run.checkpoints.select_related("run").get(prefix="model.ckpt-50")

    got = artifacts.partial_restore(remote, recipe_path=recipes.BUILT_IN, **PARTIAL)
    expected = artifacts.partial_restore(local, recipe_path=recipes.BUILT_IN, **PARTIAL)
    assert got["restored"] == {"hidden/kernel": "hidden/kernel", "hidden/bias": "hidden/bias"}
    assert got["prefix"] == remote.path and expected["prefix"] == local.path
    assert {k: v for k, v in got.items() if k != "prefix"} == {k: v for k, v in expected.items() if k != "prefix"}

    client.force_login(operator)
    url = reverse("checkpoint-partial-restore", args=[bucket_run.name, remote.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"recipe": recipes.BUILT_IN, "variables": "hidden/kernel, hidden/bias",
                                 "name_map": ""})
    job = Job.objects.get(kind=Job.RESTORE)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()


def test_partial_restore_of_a_checkpoint_gone_from_the_bucket_fails_with_its_url(bucket_run, s3_bucket):
    remote = bucket_run.checkpoints.select_related("run").get(prefix="model.ckpt-50")
    s3_bucket.delete("runs/demo/model.ckpt-50.index")
    with pytest.raises(ValueError, match="model.ckpt-50.index is not in the bucket") as raised:
        artifacts.partial_restore(remote, recipe_path=recipes.BUILT_IN, **PARTIAL)
    assert bucket_run.directory in str(raised.value)
    no_credentials(str(raised.value), "the error")


def test_only_working_directories_of_ended_processes_are_cleared(settings, tmp_path):
    import subprocess
    import sys

    from dashboard import bucket_saving

    settings.STAGING_CACHE_DIR = tmp_path / "stage"
    base = tmp_path / "stage" / bucket_saving.SAVES_SUBDIRECTORY
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for name in (f"{ended.pid}-job1-abc", f"{os.getpid()}-job2-def", "notes"):
        (base / name).mkdir(parents=True)
        (base / name / "model.ckpt-1.index").write_bytes(b"x")
    with bucket_saving.working_directory(3) as working:
        assert os.path.isdir(working) and os.path.dirname(working) == str(base)
        left = sorted(os.listdir(base))
    assert f"{ended.pid}-job1-abc" not in left
    assert f"{os.getpid()}-job2-def" in left and "notes" in left  # a running save's, and not ours at all
    assert not os.path.exists(working)


def test_resave_of_a_bucket_checkpoint_uploads_the_subset_and_leaves_the_state_object(
        bucket_run, s3_bucket, client, operator, tmp_path, settings):
    source = bucket_run.checkpoints.get(prefix="model.ckpt-25")
    before = {key: s3_bucket.get(key) for key in s3_bucket.keys()}
    client.force_login(operator)
    url = reverse("checkpoint-resave", args=[bucket_run.name, source.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"mode": "choose", "variables": ["hidden/kernel", "hidden/bias"],
                                 "rename_map": "encoder/kernel=hidden/kernel", "new_prefix": "transfer-25"})
    assert response.status_code == 302
    log = run_worker(tmp_path, settings)
    job = Job.objects.get(kind=Job.SAVE, checkpoint=source)
    assert job.status == Job.FINISHED, job.error

    after = {key: s3_bucket.get(key) for key in s3_bucket.keys()}
    assert {k: v for k, v in after.items() if k in before} == before  # nothing replaced, nothing deleted
    assert sorted(set(after) - set(before)) == ["runs/demo/transfer-25.data-00000-of-00001",
                                                "runs/demo/transfer-25.index"]
    copy = tmp_path / "copy"
    download(s3_bucket, copy)
    reader = tf().train.load_checkpoint(str(copy / "transfer-25"))
    assert sorted(reader.get_variable_to_shape_map()) == ["encoder/kernel", "hidden/bias"]
    original = tf().train.load_checkpoint(str(copy / "model.ckpt-25"))
    assert (reader.get_tensor("encoder/kernel") == original.get_tensor("hidden/kernel")).all()
    assert tf().train.latest_checkpoint(str(copy)).endswith("model.ckpt-50")  # the state is the training's

    row = bucket_run.checkpoints.get(prefix="transfer-25")
    assert row.source == source and row.path == s3_bucket.url("runs/demo/transfer-25")
    recorded = rows(bucket_run)
    scanning.scan(bucket_run, full=True)
    assert rows(bucket_run) == recorded  # what a scan of the bucket finds is what the job recorded
    for text, where in ((log, "the worker log"), (str(job.result) + job.error + "\n".join(job.log), "the job")):
        no_credentials(text, where)


def test_a_resave_onto_an_existing_prefix_in_the_bucket_is_refused_and_writes_nothing(
        bucket_run, s3_bucket, tmp_path, settings):
    source = bucket_run.checkpoints.get(prefix="model.ckpt-50")
    before = {key: s3_bucket.get(key) for key in s3_bucket.keys()}
    job = jobs.start(Job.SAVE, run=bucket_run, checkpoint=source, params={
        "mode": "resave", "new_prefix": "model.ckpt-25", "variables": None, "drop_optimizer_slots": True,
        "rename": {}})
    run_worker(tmp_path, settings)
    job.refresh_from_db()
    assert job.status == Job.FAILED and "model.ckpt-25 already" in job.error and bucket_run.directory in job.error
    assert {key: s3_bucket.get(key) for key in s3_bucket.keys()} == before
