"""Faults around a running save job: a prune of the same run, and its database connection dropped.

Each ends in a definite state: the jobs finish or fail with a reason, the web side keeps
answering, every row's files exist, and nothing a rule keeps is lost.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from dashboard import jobs, scanning
from dashboard.models import Checkpoint, Job, Run
from tests.dashboard import job_recipes as recipes
from tests.live import wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS, EVERY = 200, 10


@pytest.fixture
def root(tmp_path, settings):
    root = (tmp_path / "checkpoints").resolve()
    root.mkdir()
    settings.CHECKPOINT_ROOTS = [root]
    settings.CHECKPOINT_RECIPES = recipes.ALL
    return root


@pytest.fixture
def run(root) -> Run:
    name = f"busy-{uuid.uuid4().hex[:6]}"
    (root / name).mkdir()
    return Run.objects.create(name=name, directory=str(root / name))


def rows_match_files(run: Run) -> None:
    for row in run.checkpoints.exclude(status__in=[Checkpoint.PRUNED, Checkpoint.MISSING]):
        for f in row.files:
            assert os.path.exists(os.path.join(run.directory, f["name"])), f"{row.prefix}: {f['name']} is gone"


def site_answers(run: Run) -> None:
    from django.contrib.auth.models import User

    user = User.objects.filter(username="watcher").first() or User.objects.create_superuser("watcher", password="x")
    client = Client()
    client.force_login(user)
    assert client.get(run.get_absolute_url()).status_code == 200
    assert client.get("/jobs/").status_code == 200


def test_prune_while_a_save_writes_into_the_same_run(root, run, tmp_path):
    import tensorflow as tf

    worker = recipes.start_worker(root, tmp_path / "worker.log", SLOW_RECIPE_STEP_DELAY="0.01")
    try:
        save = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.SLOW, steps=STEPS, save_every=EVERY))
        wait_for(lambda: run.checkpoints.count() >= 4, 90, what="four recorded checkpoints")
        plans, refused = [], 0
        while save.status not in Job.ENDED:  # prune again and again while the trainer writes
            out = io.StringIO()
            try:
                call_command("prune", run.name, "--max-to-keep", "2", "--min-age", "0", "--json", stdout=out)
                plans.append(json.loads(out.getvalue()))
            except CommandError as exc:  # a checkpoint arrived between planning and executing
                assert "changed since" in str(exc), exc
                refused += 1
            site_answers(run)
            save.refresh_from_db()
        recipes.wait_for_job(save, Job.ENDED, timeout=120)
    finally:
        worker.stop()

    assert save.status == Job.FINISHED, save.error
    assert plans, f"every prune was refused ({refused})"
    # Whatever a plan kept is still there, unless a later plan deleted it.
    final = {d["prefix"] for d in plans[-1]["plan"] if d["keep"]}
    for prefix in final:
        assert os.path.exists(os.path.join(run.directory, prefix + ".index")), prefix
    scanning.scan(run, full=True)
    rows_match_files(run)
    latest = tf.train.latest_checkpoint(run.directory)
    assert latest and latest.endswith(f"model.ckpt-{STEPS}")
    assert int(tf.train.load_checkpoint(latest).get_tensor("global_step")) == STEPS
    leftovers = [n for n in os.listdir(run.directory) if ".tempstate" in n or ".partial-" in n]
    assert not leftovers, leftovers


def test_database_connection_dropped_during_a_job_ends_it_definitely(root, run, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("dropping a server-side connection needs PostgreSQL (CI runs the suite on it too)")
    worker = recipes.start_worker(root, tmp_path / "worker.log", SLOW_RECIPE_STEP_DELAY="0.02")
    try:
        save = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.SLOW, steps=STEPS, save_every=EVERY))
        wait_for(lambda: run.checkpoints.count() >= 2, 90, what="two recorded checkpoints")
        with connection.cursor() as cursor:  # what a database restart or a network cut does
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchall(), "no other connection to drop"

        def ended() -> bool:
            jobs.reconcile_jobs()
            save.refresh_from_db()
            return save.status in Job.ENDED

        wait_for(ended, 120, interval=1, what="the save job to end")
        site_answers(run)
        # The worker itself survives a dropped connection and runs the next job.
        follow_up = jobs.start(Job.SAVE, run=run, params=recipes.save_params(recipes.BUILT_IN, steps=20, save_every=10,
                                                                              prefix="after"))
        recipes.wait_for_job(follow_up, Job.ENDED, timeout=120)
    finally:
        worker.stop()

    assert save.status in (Job.FINISHED, Job.FAILED)
    if save.status == Job.FAILED:
        assert save.error, "a failed job says why"
    assert follow_up.status == Job.FINISHED, follow_up.error
    rows_match_files(run)
