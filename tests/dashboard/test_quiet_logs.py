"""Logs of the periodic jobs: RQ's routine lines about them go to DEBUG, in the worker and the
scheduler alike; lines about any other job, and every failure, keep their level."""

from __future__ import annotations

import logging

from dashboard.management.commands.rqcron import EnqueuedAtDebug
from dashboard.worker import PeriodicJobsAtDebug

REC = "dashboard.jobs.reconcile.reconcile_jobs()"


def _record(msg: str, *args, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("rq.worker", level, __file__, 1, msg, args, None)


def test_worker_lines_about_periodic_jobs_drop_to_debug_and_others_stay(caplog):
    log = logging.getLogger("test.rq.worker")
    log.setLevel(logging.INFO)
    quiet = PeriodicJobsAtDebug(log)
    taken = _record("Worker %s: %s: %s (%s)", "w1", "default", REC, "job-17")
    assert not quiet.filter(taken) and taken.levelname == "DEBUG"
    done = _record("Worker %s: %s: %s (%s)", "w1", "default", "Job OK", "job-17")
    assert not quiet.filter(done)
    summary = _record("Successfully completed %s job in %ss on worker %s", REC, "0.01", "w1")
    assert not quiet.filter(summary)

    user_job = _record("Worker %s: %s: %s (%s)", "w1", "default", "dashboard.jobs.registry.run_job(5)", "job-18")
    assert quiet.filter(user_job) and user_job.levelname == "INFO"
    failed = _record("Worker %s: %s: %s (%s)", "w1", "default", REC, "job-19", level=logging.ERROR)
    assert quiet.filter(failed) and failed.levelname == "ERROR"

    log.setLevel(logging.DEBUG)  # LOG_LEVEL=DEBUG shows them again
    again = _record("Worker %s: %s: %s (%s)", "w1", "default", REC, "job-20")
    assert quiet.filter(again) and again.levelname == "DEBUG"


def test_scheduler_enqueue_lines_drop_to_debug():
    logging.getLogger("rq.cron").setLevel(logging.INFO)
    quiet = EnqueuedAtDebug()
    enqueued = logging.LogRecord("rq.cron", logging.INFO, __file__, 1, "Enqueued job reconcile_jobs to queue default",
                                 None, None)
    assert not quiet.filter(enqueued)
    started = logging.LogRecord("rq.cron", logging.INFO, __file__, 1, "CronScheduler %s: starting...", ("x",), None)
    assert quiet.filter(started)
