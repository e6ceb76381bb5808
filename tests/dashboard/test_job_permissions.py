"""Acting on a job needs what starting its kind needs, and a job has at most one live retry.

Through the real path: TensorFlow checkpoints on disk, the pages, Redis and a real worker process.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.urls import reverse

from dashboard import access, jobs, retention, scanning
from dashboard.models import AuditEvent, Checkpoint, Job, Run
from tests.dashboard import job_recipes as recipes
from tests.live import LiveWorker, run_jobs_to_completion, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def roles():
    recipes.ensure_roles()  # a transactional test's flush removed the groups


@pytest.fixture
def empty_queue():
    yield
    # Jobs this module enqueues without a worker must not run in a later test of the session.
    jobs.get_queue().empty()


def listing(directory: str) -> set[str]:
    return set(os.listdir(directory))


def tiny_run(root, name: str, n: int) -> Run:
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    made = make_many_tiny_checkpoints(root / name, n)
    run = Run.objects.create(name=name, directory=made.directory, max_to_keep=2, min_age_seconds=0)
    scanning.scan(run)
    return run


def test_every_job_kind_has_a_permission_and_pruning_needs_maintain():
    assert set(access.JOB_PERMISSIONS) == {kind for kind, _ in Job.KIND_CHOICES}
    assert access.job_permission(Job.PRUNE) == access.MAINTAIN
    assert {access.job_permission(k) for k in access.JOB_PERMISSIONS if k != Job.PRUNE} == {access.OPERATE}


def test_an_operator_cannot_retry_a_maintainers_canceled_prune_and_nothing_is_deleted(
    client, operator, maintainer, checkpoint_root
):
    run = tiny_run(checkpoint_root, "r", 12)
    client.force_login(maintainer)
    plan = client.get(reverse("run-prune", args=["r"])).context["plan"]
    assert plan.deleted_count == 10
    client.post(reverse("run-prune-now", args=["r"]), {"fingerprint": plan.fingerprint})
    prune = Job.objects.get(kind=Job.PRUNE)
    client.post(reverse("job-cancel", args=[prune.pk]))  # the maintainer changed their mind
    prune.refresh_from_db()
    assert prune.status == Job.CANCELED
    before = listing(run.directory)

    client.force_login(operator)
    response = client.post(reverse("job-retry", args=[prune.pk]))
    run_jobs_to_completion()

    assert listing(run.directory) == before
    assert response.status_code == 403
    assert not Job.objects.filter(retry_of=prune).exists()
    assert not run.checkpoints.filter(status=Checkpoint.PRUNED).exists()
    assert not AuditEvent.objects.filter(action="prune").exists()
    with pytest.raises(PermissionDenied):
        jobs.retry_job(prune, operator)  # the same rule for callers other than the page
    page = client.get(prune.get_absolute_url()).content.decode()
    assert reverse("job-retry", args=[prune.pk]) not in page  # no button the operator may not use

    # The maintainer may: the same retry deletes what the plan says, audited as the maintainer.
    client.force_login(maintainer)
    assert reverse("job-retry", args=[prune.pk]) in client.get(prune.get_absolute_url()).content.decode()
    response = client.post(reverse("job-retry", args=[prune.pk]))
    retry = Job.objects.get(retry_of=prune)
    assert response["Location"] == retry.get_absolute_url()
    run_jobs_to_completion()
    retry.refresh_from_db()
    assert retry.status == Job.FINISHED, retry.error
    assert listing(run.directory) == before - set(plan.files_to_delete)
    assert AuditEvent.objects.get(action="prune").actor == maintainer


def test_an_operator_cannot_cancel_a_running_prune(client, operator, maintainer, checkpoint_root, tmp_path):
    run = tiny_run(checkpoint_root, "r", 80)
    plan = retention.plan_retention(run)
    prune = jobs.start(Job.PRUNE, run=run, params={"fingerprint": plan.fingerprint}, user=maintainer)

    with LiveWorker(log_path=tmp_path / "worker.log", PRUNE_PROGRESS_DELAY_SECONDS="0.05"):
        def deleting():
            job = Job.objects.get(pk=prune.pk)
            return job.status == Job.RUNNING and job.progress >= 5
        wait_for(deleting, timeout=90, what="the prune to be deleting")

        client.force_login(operator)
        assert client.post(reverse("job-cancel", args=[prune.pk])).status_code == 403
        prune.refresh_from_db()
        assert prune.status == Job.RUNNING
        with pytest.raises(PermissionDenied):
            jobs.cancel_job(prune, operator)
        assert "Cancel job" not in client.get(prune.get_absolute_url()).content.decode()

        # The maintainer who started it may stop it.
        client.force_login(maintainer)
        assert "Cancel job" in client.get(prune.get_absolute_url()).content.decode()
        assert client.post(reverse("job-cancel", args=[prune.pk])).status_code == 302
        prune.refresh_from_db()
        assert prune.status == Job.CANCELED


def test_a_failed_save_is_retried_once_and_the_second_retry_is_refused(client, operator, checkpoint_root, tmp_path):
    (checkpoint_root / "s").mkdir()
    run = Run.objects.create(name="s", directory=str(checkpoint_root / "s"))
    (checkpoint_root / "flaky.marker").touch()
    first = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.FLAKY), user=operator)
    worker = recipes.start_worker(checkpoint_root, tmp_path / "worker.log")
    try:
        recipes.wait_for_job(first, Job.FAILED)
        client.force_login(operator)
        response = client.post(reverse("job-retry", args=[first.pk]))
        retry = Job.objects.get(retry_of=first)
        assert response["Location"] == retry.get_absolute_url()
        recipes.wait_for_job(retry, Job.FINISHED)
        written = {name: os.stat(os.path.join(run.directory, name)).st_mtime_ns for name in listing(run.directory)}

        # A second retry of the same failed save would rewrite the checkpoints the first one wrote.
        response = client.post(reverse("job-retry", args=[first.pk]), follow=True)
        assert Job.objects.filter(kind=Job.SAVE).count() == 2
        assert response.status_code == 200
        assert response.redirect_chain[-1][0] == retry.get_absolute_url()
        assert f"Job #{first.pk} was already retried as job #{retry.pk} (finished)" in response.content.decode()
        page = client.get(first.get_absolute_url()).content.decode()
        assert reverse("job-retry", args=[first.pk]) not in page and f"#{retry.pk}" in page
    finally:
        worker.stop()
    assert {name: os.stat(os.path.join(run.directory, name)).st_mtime_ns for name in listing(run.directory)} == written


def test_only_the_newest_attempt_of_a_chain_can_be_retried(client, operator, run_row, empty_queue):
    first = Job.objects.create(kind=Job.SAVE, run=run_row, status=Job.FAILED, error="boom")
    second = Job.objects.create(kind=Job.SAVE, run=run_row, status=Job.CANCELED, retry_of=first)
    client.force_login(operator)

    response = client.post(reverse("job-retry", args=[first.pk]), follow=True)
    assert response.redirect_chain[-1][0] == second.get_absolute_url()
    assert f"Retry job #{second.pk} instead." in response.content.decode()
    assert list(first.retries.all()) == [second]

    response = client.post(reverse("job-retry", args=[second.pk]))
    third = Job.objects.get(retry_of=second)
    assert response["Location"] == third.get_absolute_url() and third.requested_by == operator
    with pytest.raises(Job.AlreadyRetried):
        jobs.retry_job(first, operator)


def test_two_retries_at_once_create_one_job(operator, run_row, empty_queue):
    failed = Job.objects.create(kind=Job.SAVE, run=run_row, status=Job.FAILED, error="boom")
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def retry() -> None:
        try:
            barrier.wait()
            outcomes.append(jobs.retry_job(Job.objects.get(pk=failed.pk), operator))
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    made = [o for o in outcomes if isinstance(o, Job)]
    assert len(made) == 1, outcomes
    assert list(Job.objects.filter(retry_of=failed)) == made
    refused = [o for o in outcomes if isinstance(o, Job.AlreadyRetried)]
    assert len(refused) == 1, outcomes
    assert refused[0].newest == made[0]


@pytest.fixture
def run_row(checkpoint_root) -> Run:
    directory = checkpoint_root / f"rows-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    return Run.objects.create(name=directory.name, directory=str(directory))
