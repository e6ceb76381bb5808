"""Redis down: pages render from the database, starting a job says the queue is unavailable, and
once Redis is back the reconciler enqueues what was started meanwhile (and what Redis lost)."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from dashboard import jobs
from dashboard.localredis import PrivateRedis
from dashboard.models import Job, Run
from tests.dashboard import job_recipes as recipes
from tests.dashboard.conftest import make_user

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_redis(settings):
    """A redis-server of this test's own, so that stopping it disturbs nothing else."""
    # A short path: Unix socket paths are limited to about 100 bytes, and tmp_path can be long.
    server = PrivateRedis(Path(tempfile.mkdtemp(prefix="outage-")) / "redis.sock").start()
    settings.REDIS_URL = server.url
    settings.RQ_QUEUES = {
        name: {**config, "URL": server.url} for name, config in settings.RQ_QUEUES.items()
    }
    yield server
    server.stop()


@pytest.fixture
def run(checkpoint_root, settings) -> Run:
    settings.CHECKPOINT_RECIPES = recipes.ALL
    (checkpoint_root / "outage").mkdir()
    return Run.objects.create(name="outage", directory=str(checkpoint_root / "outage"))


def test_pages_render_and_jobs_wait_for_redis_then_run(private_redis, run, checkpoint_root, client, tmp_path):
    recipes.ensure_roles()
    client.force_login(make_user("olga-operator", "operator"))
    lost = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN, steps=10, save_every=10,
                                                                      prefix="lost"))
    assert lost.rq_job_id  # enqueued: Redis was up
    failed_scan = Job.objects.create(kind=Job.SCAN, run=run, status=Job.FAILED, error="earlier failure")

    private_redis.stop()  # keeps nothing on disk: the queued job is lost with it

    for url in ("/", run.get_absolute_url(), reverse("jobs"), lost.get_absolute_url(),
                reverse("run-save", args=[run.name]), reverse("job-progress", args=[lost.pk])):
        assert client.get(url).status_code == 200, url

    started = time.monotonic()
    response = client.post(reverse("run-save", args=[run.name]), {
        "recipe": recipes.BUILT_IN, "steps": 20, "save_every": 10, "prefix": "model.ckpt", "max_to_keep": "",
        "keep_checkpoint_every_n_hours": "10000", "write_meta_graph": "always", "var_list_mode": "all",
    }, follow=True)
    assert time.monotonic() - started < 3
    html = response.content.decode()
    assert response.status_code == 200
    assert "The job queue is unavailable right now" in html and "will start when the queue is reachable again" in html
    waiting = Job.objects.get(kind=Job.SAVE, rq_job_id="")
    assert waiting.status == Job.QUEUED and "Waiting for the job queue" in waiting.message

    response = client.post(reverse("job-retry", args=[failed_scan.pk]), follow=True)
    assert "The job queue is unavailable right now" in response.content.decode()
    retried_scan = Job.objects.get(retry_of=failed_scan)
    assert retried_scan.status == Job.QUEUED and not retried_scan.rq_job_id

    assert jobs.reconcile_jobs()["queue"].startswith("unavailable")  # no exception while down

    private_redis.start()
    later = timezone.now() + dt.timedelta(seconds=jobs.ENQUEUE_GRACE_SECONDS + 1)
    summary = jobs.reconcile_jobs(now=later)
    assert sorted(summary["enqueued"]) == sorted([lost.pk, waiting.pk, retried_scan.pk])

    worker = recipes.start_worker(checkpoint_root, tmp_path / "worker.log", burst=True)
    try:
        assert worker.wait(timeout=120) == 0
    finally:
        worker.stop()
    for job in (lost, waiting, retried_scan):
        job.refresh_from_db()
        assert job.status == Job.FINISHED, (job.pk, job.error)
    assert sorted(run.checkpoints.values_list("prefix", flat=True)) == ["lost-10", "model.ckpt-10", "model.ckpt-20"]


def test_reconciler_leaves_fresh_rows_to_the_request_still_enqueueing_them(private_redis, run):
    job = Job.objects.create(kind=Job.SCAN, run=run)  # as start() has it before enqueue()
    assert jobs.reconcile_jobs() == {}
    job.refresh_from_db()
    assert job.rq_job_id == ""
    assert jobs.reconcile_jobs(now=timezone.now() + dt.timedelta(minutes=1))["enqueued"] == [job.pk]
    job.refresh_from_db()
    assert job.rq_job_id == f"job-{job.pk}" and recipes.rq_status(job) == "queued"


def test_cancel_while_redis_is_unreachable_still_keeps_the_job_from_running(
    private_redis, run, client, tmp_path, checkpoint_root, settings
):
    job = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN))
    recipes.ensure_roles()
    client.force_login(make_user("olga-operator", "operator"))
    reachable = settings.RQ_QUEUES
    settings.RQ_QUEUES = {name: {**c, "URL": "unix:///nonexistent/redis.sock"} for name, c in reachable.items()}

    assert client.post(reverse("job-cancel", args=[job.pk])).status_code == 302  # the row is the truth

    settings.RQ_QUEUES = reachable
    job.refresh_from_db()
    assert job.status == Job.CANCELED and recipes.rq_status(job) == "queued"  # RQ never heard of it
    worker = recipes.start_worker(checkpoint_root, tmp_path / "worker.log", burst=True)
    try:
        assert worker.wait(timeout=120) == 0
    finally:
        worker.stop()
    job.refresh_from_db()
    assert job.status == Job.CANCELED and job.started_at is None and not run.checkpoints.exists()
