"""The periodic sweep never piles rescans up: a run whose scan is queued or running gets no second
one, however many sweeps (or schedulers) run meanwhile. Real database (run the module on
PostgreSQL too), real Redis, real worker processes, real checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from dashboard import jobs, scanning
from dashboard.jobs.context import claim
from dashboard.models import Job, Run
from tests import checkpoint_factory as factory
from tests.live import BASE_DIR, run_jobs_to_completion, subprocess_env

pytestmark = [pytest.mark.django_db(transaction=True)]

ACTIVE = (Job.QUEUED, Job.RUNNING)


def new_run(root, name: str) -> Run:
    (root / name).mkdir()
    return Run.objects.create(name=name, directory=str(root / name))


def scan_jobs(run: Run):
    return Job.objects.filter(run=run, kind=Job.SCAN)


def settle(run: Run) -> None:
    # directory_stamp treats a directory changed within the last second as changed.
    time.sleep(max(0.0, os.stat(run.directory).st_mtime + 1.1 - time.time()))


def test_sweeping_twice_while_a_rescan_is_queued_starts_one_job(checkpoint_root):
    run = new_run(checkpoint_root, "busy")
    first = jobs.scan_all_runs()
    second = jobs.scan_all_runs()
    assert scan_jobs(run).count() == 1
    job = scan_jobs(run).get()
    assert job.status == Job.QUEUED and job.params == {"periodic": True} and job.rq_job_id
    assert first["busy"] == {"scan_job": job.pk}
    assert "queued or running" in second["busy"]["skipped"]
    assert jobs.start_rescan(run) is None
    assert scan_jobs(run).count() == 1


def test_a_running_scan_holds_back_the_next_rescan(checkpoint_root):
    run = new_run(checkpoint_root, "running")
    job = jobs.start_rescan(run)
    assert claim(job.pk) is not None  # what the worker does when it takes the job
    assert "skipped" in jobs.scan_all_runs()["running"]
    assert jobs.start_rescan(run) is None
    assert list(scan_jobs(run).values_list("status", flat=True)) == [Job.RUNNING]


def test_a_scan_a_user_started_holds_back_the_periodic_one(checkpoint_root):
    run = new_run(checkpoint_root, "asked")
    jobs.start(Job.SCAN, run=run)
    assert "skipped" in jobs.scan_all_runs()["asked"]
    assert scan_jobs(run).count() == 1 and not scan_jobs(run).filter(params__periodic=True).exists()


@pytest.mark.tf
def test_once_the_scan_ended_a_changed_run_gets_a_new_one_and_an_idle_run_is_rescanned_inline(checkpoint_root):
    run = new_run(checkpoint_root, "lively")
    factory.make_many_tiny_checkpoints(run.directory, 3)
    first = jobs.start_rescan(run)
    run_jobs_to_completion()
    first.refresh_from_db()
    assert first.status == Job.FINISHED, first.error
    assert run.checkpoints.count() == 3

    # Nothing changed since: the sweep rescans it itself (no job) and records when.
    settle(run)
    run.refresh_from_db()
    before = run.last_scanned_at
    summary = jobs.scan_all_runs()
    assert summary["lively"]["unchanged_directory"] is True
    assert scan_jobs(run).count() == 1
    run.refresh_from_db()
    assert run.last_scanned_at > before

    # A trainer saved again: a new scan job, and only one however often the sweep comes.
    factory.make_many_tiny_checkpoints(run.directory, 2, family="later.ckpt")
    jobs.scan_all_runs()
    jobs.scan_all_runs()
    assert scan_jobs(run).count() == 2 and scan_jobs(run).filter(status=Job.QUEUED).count() == 1
    run_jobs_to_completion()
    assert run.checkpoints.count() == 5
    assert not scan_jobs(run).filter(status__in=ACTIVE).exists()
    assert jobs.start_rescan(run) is not None  # ended scans hold nothing back


def test_a_failed_or_canceled_scan_does_not_hold_back_the_next(checkpoint_root):
    run = new_run(checkpoint_root, "after")
    for status in (Job.FAILED, Job.CANCELED, Job.FINISHED):
        Job.objects.create(kind=Job.SCAN, run=run, status=status)
    assert jobs.start_rescan(run) is not None
    assert scan_jobs(run).filter(status__in=ACTIVE).count() == 1


def test_a_broken_run_is_reported_and_does_not_stop_the_sweep(checkpoint_root):
    gone = new_run(checkpoint_root, "gone")
    os.rmdir(gone.directory)
    fine = new_run(checkpoint_root, "fine")
    summary = jobs.scan_all_runs()
    assert "does not exist" in summary["gone"]["error"]
    assert not scan_jobs(gone).exists()  # not a failed job every minute for a directory that went away
    assert scan_jobs(fine).count() == 1


def test_two_schedulers_racing_in_threads_start_one_scan_per_run(checkpoint_root):
    runs = [new_run(checkpoint_root, f"race-{i:02d}") for i in range(30)]
    for _round in range(3):
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []

        def sweep(barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            from django.db import connection

            try:
                barrier.wait()
                for run in runs:
                    jobs.start_rescan(run)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=sweep) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        for run in runs:
            assert scan_jobs(run).filter(status__in=ACTIVE).count() == 1, run.name
        # The scans end; the next round may start one again for each run, and only one.
        Job.objects.filter(kind=Job.SCAN).update(status=Job.FINISHED)
    assert Job.objects.filter(kind=Job.SCAN).count() == 3 * len(runs)


def test_two_sweeps_racing_in_processes_start_one_scan_per_run(checkpoint_root):
    runs = [new_run(checkpoint_root, f"proc-{i:02d}") for i in range(40)]
    start_at = time.time() + 6  # both processes import Django first, then sweep at the same moment
    code = (
        "import time, django; django.setup()\n"
        "from dashboard import jobs\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "print(sum('scan_job' in v for v in jobs.scan_all_runs().values()))\n"
    )
    env = subprocess_env(DJANGO_SETTINGS_MODULE="dashboard.settings")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=BASE_DIR, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    started = [int(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(started) == len(runs), outputs
    for run in runs:
        assert scan_jobs(run).count() == 1, run.name


def test_an_idle_run_is_rescanned_without_a_job_even_with_scanning_state_recorded(checkpoint_root):
    run = new_run(checkpoint_root, "idle")
    settle(run)
    scanning.scan(run)  # as the first scan left it: directory stamp recorded
    summary = jobs.scan_all_runs()
    assert summary["idle"]["unchanged_directory"] is True
    assert not scan_jobs(run).exists()
