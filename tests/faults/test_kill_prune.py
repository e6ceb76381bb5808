"""``kill -9`` of the work horse in the middle of a prune job, then prune again.

Two identical copies of one directory: one is pruned by a job whose horse is killed halfway through
deleting (``PRUNE_PROGRESS_DELAY_SECONDS`` slows the job's own progress reports so that the kill
lands there; it is 0 in use), then retried; the other is pruned without interruption. Both end the
same on disk, in their state files and in their rows, and nothing the plan kept was ever deleted.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from dashboard import jobs, retention, scanning
from dashboard.models import AuditEvent, Job, Run
from persistence.statefile import read_state_file
from tests.dashboard.conftest import make_user
from tests.live import LiveWorker, run_jobs_to_completion, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POLICY = {"max_to_keep": 5, "keep_every_n_steps": 50, "min_age_seconds": 0}
RECONCILE_DEADLINE = 120


def listing(directory: str) -> set[str]:
    return set(os.listdir(directory))


def rows(run: Run) -> dict[str, tuple]:
    return {c.prefix: (c.status, [f["name"] for f in c.files], c.latest_in)
            for c in run.checkpoints.all()}


def test_kill_9_mid_prune_then_prune_again_ends_like_an_uninterrupted_prune(checkpoint_root, tmp_path):
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    made = make_many_tiny_checkpoints(checkpoint_root / "killed", 400)
    shutil.copytree(made.directory, checkpoint_root / "calm")  # copy2: the same times, so the same plan
    killed = Run.objects.create(name="killed", directory=made.directory, **POLICY)
    calm = Run.objects.create(name="calm", directory=str(checkpoint_root / "calm"), **POLICY)
    scanning.scan(killed)
    scanning.scan(calm)
    plan = retention.plan_retention(killed)
    assert plan.fingerprint == retention.plan_retention(calm).fingerprint and plan.deleted_count == 388
    doomed = set(plan.files_to_delete)
    kept = listing(made.directory) - doomed

    job = jobs.start(Job.PRUNE, run=killed, params={"fingerprint": plan.fingerprint})
    with LiveWorker(log_path=tmp_path / "worker.log", PRUNE_PROGRESS_DELAY_SECONDS="0.05") as worker:
        wait_for(lambda: Job.objects.get(pk=job.pk).progress >= 25, 90, what="the prune to be a quarter done")
        for pid in wait_for(worker.horse_pids, 10, what="the work horse"):
            os.kill(pid, signal.SIGKILL)
        middle = listing(made.directory)
        started = time.monotonic()
        while time.monotonic() - started < RECONCILE_DEADLINE:
            jobs.reconcile_jobs()
            job.refresh_from_db()
            if job.status != Job.RUNNING:
                break
            time.sleep(1)
    assert job.status == Job.FAILED, (job.status, job.message)
    assert "plan" in job.result and "execution" not in job.result  # recorded before deleting, never finished

    # Killed in the middle: part of the plan done, nothing it keeps touched, and TensorFlow's view is
    # already consistent (the state file was rewritten first and names only survivors).
    assert 0 < len(doomed - middle) < len(doomed)
    assert kept <= middle
    state = read_state_file(made.directory)
    assert all(f"{p}.index" in middle for p in [state.latest, *state.all_prefixes])
    assert not AuditEvent.objects.filter(action="prune").exists()

    retry = jobs.retry_job(job, make_user("mona-maintainer", "maintainer"))  # retrying a prune deletes: maintainers only
    run_jobs_to_completion()
    retry.refresh_from_db()
    assert retry.status == Job.FINISHED, retry.error
    assert retry.result["resumed_from"] == job.pk and retry.result["plan"] == plan.to_dict()

    call_command("prune", "calm", stdout=io.StringIO())  # the uninterrupted prune of the identical copy

    assert listing(made.directory) == kept == listing(calm.directory)
    state_text = [(Path(d) / "checkpoint").read_text() for d in (made.directory, calm.directory)]
    assert state_text[0] == state_text[1]
    assert rows(killed) == rows(calm)
    killed_event, calm_event = (AuditEvent.objects.get(action="prune", run=r) for r in (killed, calm))
    assert killed_event.bytes_freed == calm_event.bytes_freed == plan.bytes_freed
    assert killed_event.details["resumed_from"] == job.pk
