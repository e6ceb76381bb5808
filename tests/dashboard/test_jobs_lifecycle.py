"""Jobs through a real worker process and a real Redis: success, failure with a traceback, timeout,
cancel (queued and running), retry, and the pages that show them."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from dashboard import jobs
from dashboard.models import Checkpoint, Job, Run
from tests.dashboard import job_recipes as recipes
from tests.dashboard.conftest import make_user
from tests.live import wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-lifecycle").resolve()


@pytest.fixture(scope="module")
def worker(jobs_root, django_db_setup, tmp_path_factory):
    live = recipes.start_worker(jobs_root, tmp_path_factory.mktemp("logs") / "worker.log")
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def job_settings(settings, jobs_root):
    settings.CHECKPOINT_ROOTS = [jobs_root]
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


def test_save_job_finishes_and_records_each_checkpoint(worker, run, operator_client):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN, steps=30, save_every=10))

    recipes.wait_for_job(job, Job.FINISHED)

    assert job.progress == 100 and job.started_at and job.ended_at and job.rq_job_id == f"job-{job.pk}"
    assert [s["step"] for s in job.result["saved"]] == [10, 20, 30]
    rows = {c.step: c for c in run.checkpoints.all()}
    assert sorted(rows) == [10, 20, 30]
    assert all({"loss", "accuracy"} <= set(c.metrics) for c in rows.values())
    assert rows[30].latest_in == ["checkpoint"] and not rows[20].latest_in
    assert any("Saved model.ckpt-30 (accuracy " in line for line in job.log)
    page = operator_client.get(job.get_absolute_url()).content.decode()
    assert "model.ckpt-20" in page and "Checkpoints written" in page


def test_recipe_that_raises_fails_the_job_with_its_traceback(worker, run, operator_client):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.FAILING))

    recipes.wait_for_job(job, Job.FAILED)

    assert job.error == "RuntimeError: this recipe fails on purpose while building its graph"
    assert "Traceback (most recent call last)" in job.traceback and "job_recipes.py" in job.traceback
    assert job.ended_at and not run.checkpoints.exists()
    page = operator_client.get(job.get_absolute_url()).content.decode()
    assert "fails on purpose" in page and "Traceback (most recent call last)" in page
    assert reverse("job-retry", args=[job.pk]) in page  # failed jobs offer a retry


def test_job_over_its_timeout_fails_saying_so(worker, run, settings):
    settings.JOB_TIMEOUTS = {Job.SAVE: 3}  # read when the job is enqueued
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(steps=5000, save_every=100))

    recipes.wait_for_job(job, [Job.FAILED, Job.FINISHED], timeout=60)

    assert job.status == Job.FAILED
    assert job.error.startswith("Timed out: the save job ran longer than its limit of 3 s")
    assert job.ended_at - job.started_at < dt.timedelta(seconds=30)


def test_cancel_running_save_stops_it_between_steps(worker, run, operator_client):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(steps=3000, save_every=50))
    wait_for(lambda: run.checkpoints.exists(), 60, what="a first checkpoint")

    response = operator_client.post(reverse("job-cancel", args=[job.pk]))

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.CANCELED and job.ended_at
    # The body notices within a step or two and returns; RQ then records the job as done.
    wait_for(lambda: recipes.rq_status(job) == "finished", 30, what="the body to stop")
    job.refresh_from_db()
    assert job.status == Job.CANCELED and job.result["canceled"] is True
    assert job.result["stopped_at_step"] < 3000 and job.progress < 100
    saved = [s["prefix"] for s in job.result["saved"]]
    assert saved and set(saved) == set(run.checkpoints.values_list("prefix", flat=True))


def test_cancel_queued_job_never_runs(worker, run, operator_client):
    busy = jobs.start(Job.SAVE, run=run, params=recipes.save_params(steps=3000, save_every=1000))
    recipes.wait_for_job(busy, Job.RUNNING)
    other = Run.objects.create(name=f"{run.name}-2", directory=run.directory + "-2")
    Path(other.directory).mkdir()
    waiting = jobs.start(Job.SAVE, run=other, params=recipes.save_params(recipes.BUILT_IN))

    operator_client.post(reverse("job-cancel", args=[waiting.pk]))
    assert recipes.rq_status(waiting) == "canceled"
    operator_client.post(reverse("job-cancel", args=[busy.pk]))
    wait_for(lambda: recipes.rq_status(busy) == "finished", 30, what="the busy job to stop")

    waiting.refresh_from_db()
    assert waiting.status == Job.CANCELED and waiting.started_at is None
    assert not other.checkpoints.exists()


def test_retry_creates_a_linked_job_that_succeeds(worker, run, jobs_root, operator_client):
    (jobs_root / "flaky.marker").touch()
    first = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.FLAKY))
    recipes.wait_for_job(first, Job.FAILED)
    assert "failing this once" in first.error

    response = operator_client.post(reverse("job-retry", args=[first.pk]))

    retry = Job.objects.get(retry_of=first)
    assert response.status_code == 302 and response["Location"] == retry.get_absolute_url()
    assert retry.params == first.params and retry.kind == Job.SAVE and retry.run == run
    recipes.wait_for_job(retry, Job.FINISHED)
    assert sorted(run.checkpoints.values_list("step", flat=True)) == [10, 20]
    page = operator_client.get(first.get_absolute_url()).content.decode()
    assert f"#{retry.pk}" in page  # the failed job links to its retry


def test_a_job_delivered_twice_runs_once(worker, run):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN))
    recipes.wait_for_job(job, Job.FINISHED)
    ended_at = job.ended_at

    jobs.enqueue(job)  # e.g. the reconciler re-enqueueing a row it thought Redis had lost
    wait_for(lambda: recipes.rq_status(job) == "finished", 30, what="the second delivery")

    job.refresh_from_db()
    assert job.status == Job.FINISHED and job.ended_at == ended_at
    assert run.checkpoints.count() == 2
    assert job.pk not in jobs.reconcile_jobs().get("failed", [])


# --- pages and permissions (no worker needed) ----------------------------------------------


def test_viewers_see_no_cancel_or_retry_and_get_403(client, viewer, run):
    failed = Job.objects.create(kind=Job.SAVE, run=run, status=Job.FAILED, error="boom")
    queued = Job.objects.create(kind=Job.SAVE, run=run)
    client.force_login(viewer)

    assert "Retry" not in client.get(failed.get_absolute_url()).content.decode()
    assert "Cancel job" not in client.get(queued.get_absolute_url()).content.decode()
    assert client.post(reverse("job-retry", args=[failed.pk])).status_code == 403
    assert client.post(reverse("job-cancel", args=[queued.pk])).status_code == 403
    queued.refresh_from_db()
    assert queued.status == Job.QUEUED and not Job.objects.filter(retry_of=failed).exists()


def test_cancel_and_retry_need_post(operator_client, run):
    job = Job.objects.create(kind=Job.SAVE, run=run, status=Job.FAILED)
    assert operator_client.get(reverse("job-retry", args=[job.pk])).status_code == 405
    assert operator_client.get(reverse("job-cancel", args=[job.pk])).status_code == 405


def test_cancel_of_an_ended_job_says_there_is_nothing_to_cancel(operator_client, run):
    job = Job.objects.create(kind=Job.SAVE, run=run, status=Job.FINISHED)
    response = operator_client.post(reverse("job-cancel", args=[job.pk]), follow=True)
    assert "nothing to cancel" in response.content.decode()
    job.refresh_from_db()
    assert job.status == Job.FINISHED


def test_retry_of_a_running_job_is_refused(operator_client, run):
    job = Job.objects.create(kind=Job.SAVE, run=run, status=Job.RUNNING)
    response = operator_client.post(reverse("job-retry", args=[job.pk]), follow=True)
    assert "Only failed or canceled jobs can be retried" in response.content.decode()
    assert not Job.objects.filter(retry_of=job).exists()


def test_job_list_filters_by_kind_status_and_run(client, viewer, run):
    other = Run.objects.create(name="other-run", directory=run.directory + "-other")
    Job.objects.create(kind=Job.SAVE, run=run, status=Job.FAILED)
    Job.objects.create(kind=Job.SCAN, run=run, status=Job.FINISHED)
    Job.objects.create(kind=Job.SCAN, run=other, status=Job.FINISHED)
    client.force_login(viewer)

    def shown(**params) -> int:
        return client.get(reverse("jobs"), params).content.decode().count('class="job-progress"')

    assert shown() == 3
    assert shown(kind="scan") == 2
    assert shown(status="failed") == 1
    assert shown(run="other-run") == 1
    assert shown(kind="scan", run=run.name) == 1
    assert "No jobs match" in client.get(reverse("jobs"), {"status": "canceled"}).content.decode()


def test_progress_partial_polls_until_the_job_ends(client, viewer, run):
    job = Job.objects.create(kind=Job.SAVE, run=run, status=Job.RUNNING, progress=40, message="Step 120/300")
    client.force_login(viewer)
    url = reverse("job-progress", args=[job.pk])

    running = client.get(url, {"reload": 1})
    assert 'hx-trigger="every 1s"' in running.content.decode() and "Step 120/300" in running.content.decode()
    assert "HX-Refresh" not in running

    Job.objects.filter(pk=job.pk).update(status=Job.FINISHED, progress=100)
    ended = client.get(url, {"reload": 1})
    assert "hx-trigger" not in ended.content.decode()
    assert ended["HX-Refresh"] == "true"  # the job page reloads once to show the result
    assert "HX-Refresh" not in client.get(url)  # lists just stop polling


def test_job_page_shows_params_result_log_and_error(client, viewer, run):
    job = Job.objects.create(
        kind=Job.SAVE, run=run, status=Job.FAILED, params={"recipe": "x.Y", "steps": 7},
        result={"saved": []}, log=["12:00:00 Saved model.ckpt-5"], error="ValueError: bad",
        traceback="Traceback (most recent call last):\n  ...\nValueError: bad",
    )
    client.force_login(viewer)
    html = client.get(job.get_absolute_url()).content.decode()
    for text in ("x.Y", "Saved model.ckpt-5", "ValueError: bad"):
        assert text in html
    # The traceback is for the people who start and fix jobs (viewers get the error message only).
    client.force_login(make_user("otto-operator", "operator"))
    assert "Traceback (most recent call last)" in client.get(job.get_absolute_url()).content.decode()
    assert Checkpoint.objects.count() == 0
