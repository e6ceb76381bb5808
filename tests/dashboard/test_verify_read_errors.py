"""A read error that says nothing about the bytes never makes a good checkpoint "corrupt".

Real worker, real files: the worker runs without root's power to ignore file permissions, so a
data shard or index with mode 000 really cannot be read (EACCES). The checkpoint keeps its status,
the verification records the error, retention still counts it, and the next verify or scan that
can read it clears the error. A flipped byte in the same run is still found corrupt.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from dashboard import jobs, retention, scanning
from dashboard.models import Checkpoint, Job, Run
from tests.live import LiveWorker, module_roots, module_worker, wait_for, without_file_permission_override

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

DATA = ".data-00000-of-00001"


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("read-error-template") / "demo"
    make_demo_run(str(directory), steps=75, save_every=25)
    return directory


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "read-error-roots") as base:
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here (setpriv)")
    with module_worker(django_db_blocker, tmp_path_factory, command_prefix=prefix) as live:
        yield live


def run_job(worker: LiveWorker, kind: str, **kwargs) -> Job:
    job = jobs.start(kind, **kwargs)

    def ended():
        job.refresh_from_db()
        return job.is_ended

    try:
        wait_for(ended, 180, interval=0.1, what=f"{kind} job")
    except TimeoutError:
        raise AssertionError(worker.log_path.read_text()[-4000:]) from None
    assert job.status == Job.FINISHED, (job.error, worker.log_path.read_text()[-3000:])
    return job


def flip_one_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_permission_denied_leaves_the_status_and_records_the_error(roots, demo_template, worker, client, operator):
    name = f"demo-{uuid.uuid4().hex[:6]}"
    directory = roots / "checkpoints" / name
    shutil.copytree(demo_template, directory)
    run = Run.objects.create(name=name, directory=str(directory), max_to_keep=1, min_age_seconds=0)
    scanning.scan(run)
    newest = run.checkpoints.get(step=75)
    run_job(worker, Job.RESTORE, run=run, checkpoint=newest)
    newest.refresh_from_db()
    assert newest.status == Checkpoint.VERIFIED

    # The data shard cannot be read (as on a share whose permissions were changed under us).
    os.chmod(newest.path + DATA, 0)
    job = run_job(worker, Job.RESTORE, run=run, checkpoint=newest)

    newest.refresh_from_db()
    assert newest.status == Checkpoint.VERIFIED
    error = newest.verification["read_error"]
    assert "Permission denied" in error["message"] and error["failed_tensor"]
    assert newest.verification["variables"]  # the last verification's findings are kept
    assert job.result["status"] == Checkpoint.VERIFIED and job.result["read_error"]["message"] == error["message"]
    assert "could not read it" in job.message and "status left verified" in job.message
    client.force_login(operator)
    html = client.get(newest.get_absolute_url()).content.decode()
    assert "could not read this checkpoint" in html and "Permission denied" in html
    # Retention still sees a good checkpoint: it is the newest one kept, nothing deletes it.
    decision = {d.prefix: d for d in retention.plan_retention(run).decisions}[newest.prefix]
    assert decision.keep and "kept: newest 1" in decision.reasons

    # A full rescan cannot read the index either: the status stays, the problem is shown.
    os.chmod(newest.path + ".index", 0)
    run_job(worker, Job.SCAN, run=run, params={"full": True})
    newest.refresh_from_db()
    assert newest.status == Checkpoint.VERIFIED
    assert newest.format == "tf1" and newest.variables
    assert "Permission denied" in newest.problems[0]

    # Readable again: the next scan and the next verify clear the errors.
    os.chmod(newest.path + ".index", 0o644)
    os.chmod(newest.path + DATA, 0o644)
    run_job(worker, Job.SCAN, run=run)
    newest.refresh_from_db()
    assert newest.problems == []
    run_job(worker, Job.RESTORE, run=run, checkpoint=newest)
    newest.refresh_from_db()
    assert newest.status == Checkpoint.VERIFIED and "read_error" not in newest.verification

    # Damage is still damage.
    older = run.checkpoints.get(step=50)
    flip_one_byte(older.path + DATA)
    run_job(worker, Job.RESTORE, run=run, checkpoint=older)
    older.refresh_from_db()
    assert older.status == Checkpoint.CORRUPT and "Checksum does not match" in older.verification["message"]


def test_a_corrupt_checkpoint_is_deleted_only_with_the_reason_in_the_preview(checkpoint_root, client, maintainer):
    from django.urls import reverse

    from tests.dashboard.test_prune_plan import fake_run

    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4], max_to_keep=2)
    # Step 4 was found damaged; step 3's last verify could not read it (status kept, error recorded).
    run.checkpoints.filter(step=4).update(status=Checkpoint.CORRUPT, latest_in=[])
    run.checkpoints.filter(step=3).update(status=Checkpoint.VERIFIED,
                                          verification={"status": "verified", "read_error": {"message": "EIO"}})
    client.force_login(maintainer)

    html = client.get(reverse("run-prune", args=["r"])).content.decode()
    plan = {d.prefix: d for d in retention.plan_retention(run).decisions}

    # The corrupt one does not take a "newest" slot; its deletion says it is corrupt, on the page.
    assert plan["model.ckpt-4"].reasons == ["deleted: no rule keeps it (corrupt)"]
    assert "deleted: no rule keeps it (corrupt)" in html
    # The one that merely could not be read counts like any good checkpoint.
    assert plan["model.ckpt-3"].keep and "kept: newest 2" in plan["model.ckpt-3"].reasons
