"""Long-running processes ride out a Redis outage: the scheduler and a worker stay alive while
Redis is down, and once it is back a job created during the outage is enqueued by the reconciler
and run by the worker, with nobody restarting anything."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dashboard import jobs
from dashboard.localredis import PrivateRedis
from dashboard.models import Job, Run
from tests.dashboard import job_recipes as recipes
from tests.live import BASE_DIR, subprocess_env, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

OUTAGE_SECONDS = 17


@pytest.fixture
def private_redis(settings):
    """A redis-server of this test's own, so that stopping it disturbs nothing else."""
    # A short path: Unix socket paths are limited to about 100 bytes, and tmp_path can be long.
    server = PrivateRedis(Path(tempfile.mkdtemp(prefix="outage-")) / "redis.sock").start()
    settings.REDIS_URL = server.url
    settings.RQ_QUEUES = {name: {**config, "URL": server.url} for name, config in settings.RQ_QUEUES.items()}
    yield server
    server.stop()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def test_scheduler_and_worker_survive_redis_outage_and_resume(private_redis, checkpoint_root, tmp_path, settings):
    settings.CHECKPOINT_RECIPES = recipes.ALL
    (checkpoint_root / "outage").mkdir()
    run = Run.objects.create(name="outage", directory=str(checkpoint_root / "outage"))
    env = {"REDIS_URL": private_redis.url, "SCAN_INTERVAL_SECONDS": "0"}
    scheduler_log = tmp_path / "scheduler.log"
    worker_log = tmp_path / "worker.log"
    with open(scheduler_log, "wb") as log:
        # The production command, exactly as the README gives it.
        scheduler = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "rqcron", "dashboard.cron"],
            cwd=BASE_DIR, env=subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = recipes.start_worker(checkpoint_root, worker_log, SLOW_RECIPE_STEP_DELAY="0.1", **env)
    try:
        before = jobs.start(Job.SCAN, run=run)
        wait_for(lambda: Job.objects.get(pk=before.pk).status == Job.FINISHED, 90, what="a scan before the outage")

        # Redis goes away while the worker is busy (RQ itself only retries while it waits for a job).
        busy = jobs.start(Job.SAVE, run=run, params=recipes.save_params(steps=40, save_every=20))
        recipes.wait_for_job(busy, Job.RUNNING, timeout=60)
        private_redis.stop()
        with pytest.raises(jobs.QueueUnavailable):
            jobs.start(Job.SCAN, run=run)
        during = Job.objects.get(kind=Job.SCAN, rq_job_id="")
        time.sleep(OUTAGE_SECONDS)
        assert scheduler.poll() is None, f"scheduler exited during the outage:\n{_tail(scheduler_log)}"
        assert worker.process.poll() is None, f"worker exited during the outage:\n{_tail(worker_log)}"

        private_redis.start()  # same socket, empty (it keeps nothing on disk)
        try:
            wait_for(lambda: Job.objects.get(pk=during.pk).status == Job.FINISHED, 120,
                     what="the scan created during the outage to run")
        except TimeoutError:
            pytest.fail(f"job stayed {Job.objects.get(pk=during.pk).status}\nscheduler:\n{_tail(scheduler_log)}"
                        f"\nworker:\n{_tail(worker_log)}")
        assert Job.objects.get(pk=during.pk).rq_job_id
        # The save that was running when Redis went away ended one way or the other (its body
        # records the outcome in the database, or the reconciler fails it); never stuck.
        recipes.wait_for_job(busy, [Job.FINISHED, Job.FAILED], timeout=60)
        assert scheduler.poll() is None and worker.process.poll() is None

        # A second outage is ridden out the same way (the recovery is not a one-off).
        private_redis.stop()
        time.sleep(3)
        private_redis.start()
        again = jobs.start(Job.SCAN, run=run)
        wait_for(lambda: Job.objects.get(pk=again.pk).status == Job.FINISHED, 90, what="a scan after two outages")
        assert scheduler.poll() is None and worker.process.poll() is None
        # One warning per outage, not one per retry.
        assert _tail(scheduler_log).count("Redis is unreachable") <= 2
    finally:
        worker.stop()
        if scheduler.poll() is None:
            scheduler.terminate()
            try:
                scheduler.wait(timeout=10)
            except subprocess.TimeoutExpired:
                scheduler.kill()
                scheduler.wait()


def _children(pid: int) -> dict[int, str]:
    """Direct children of a process: pid -> command line."""
    try:
        pids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return {}
    found = {}
    for child in pids:
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            pass
    return found


def _child_running(pid: int, needle: str, not_pid: int | None = None) -> int | None:
    return next((p for p, cmd in _children(pid).items() if needle in cmd and p != not_pid), None)


def test_runlocal_restarts_a_dead_redis_and_dead_children(checkpoint_root, tmp_path):
    """``make run``'s launcher brings back its private redis-server and any child that died, and
    the whole stack then runs jobs again."""
    import os
    import signal

    from tests.live import free_port

    (checkpoint_root / "local").mkdir()
    run = Run.objects.create(name="local", directory=str(checkpoint_root / "local"))
    var_dir = Path(tempfile.mkdtemp(prefix="runlocal-"))  # short: it holds the Redis socket
    env = subprocess_env(VAR_DIR=str(var_dir), SCAN_INTERVAL_SECONDS="0")
    del env["REDIS_URL"]  # the launcher then starts and owns a private redis-server
    log_path = tmp_path / "runlocal.log"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "runlocal", "--workers", "1",
             "--addr", f"127.0.0.1:{free_port()}"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    redis_sock = PrivateRedis(var_dir / "redis.sock")
    try:
        first_redis = wait_for(lambda: _child_running(launcher.pid, "redis-server"), 30, what="redis-server")
        scheduler = wait_for(lambda: _child_running(launcher.pid, "rqcron"), 30, what="the scheduler")

        os.kill(first_redis, signal.SIGKILL)
        wait_for(lambda: _child_running(launcher.pid, "redis-server", not_pid=first_redis) and redis_sock._answers(),
                 30, what="a new redis-server")
        os.kill(scheduler, signal.SIGKILL)
        wait_for(lambda: _child_running(launcher.pid, "rqcron", not_pid=scheduler), 30, what="a new scheduler")

        # A job row the queue never saw (as if created while Redis was down): the restarted
        # scheduler's reconciler enqueues it and the worker runs it.
        waiting = Job.objects.create(kind=Job.SCAN, run=run)
        try:
            wait_for(lambda: Job.objects.get(pk=waiting.pk).status == Job.FINISHED, 120,
                     what="the job to run after the restarts")
        except TimeoutError:
            pytest.fail(f"job stayed {Job.objects.get(pk=waiting.pk).status}:\n{_tail(log_path)}")
        assert launcher.poll() is None
        log_text = log_path.read_text(errors="replace")
        assert "redis-server (private) is not running; starting it again" in log_text
        assert "scheduler exited with code" in log_text
    finally:
        leftovers = list(_children(launcher.pid))
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        for pid in leftovers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
