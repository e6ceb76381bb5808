"""Prune over the API: the preview is ``manage.py prune --json``'s plan, the prune executes exactly
that plan through the prune job, and a run that changed since the preview is a 409."""

from __future__ import annotations

import io
import json
import os

import pytest
from django.core.management import call_command

from dashboard import jobs, scanning
from dashboard.models import Checkpoint, Job, Run
from tests.checkpoint_factory import make_seed_run

from .conftest import TokenClient, token_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db]


@pytest.fixture
def seed_run(checkpoint_root) -> Run:
    seed = make_seed_run(checkpoint_root / "seed", steps=(100, 200, 300, 400), max_to_keep=None)
    run = Run.objects.create(name="seed", directory=seed.directory)
    scanning.scan(run)
    return run


def test_preview_is_the_commands_plan_and_prune_executes_it(seed_run, api_users):
    maintainer = TokenClient(token_for(api_users["maintainer"], "maintainer"))
    viewer = TokenClient(token_for(api_users["viewer"], "viewer"))
    preview = viewer.post_json("/api/v1/runs/seed/prune-preview", {"max_to_keep": 2, "min_age_seconds": 0})
    assert preview.status_code == 200, preview.content
    body = preview.json()
    out = io.StringIO()
    call_command("prune", "seed", "--max-to-keep", "2", "--min-age", "0", "--dry-run", "--json", stdout=out)
    command = json.loads(out.getvalue())
    assert body == {k: command[k] for k in ("run", "plan", "bytes_freed", "leftovers", "fingerprint")}
    deleted = [row["prefix"] for row in body["plan"] if not row["keep"]]
    assert "model.ckpt-100" in deleted and "model.ckpt-400" not in deleted
    # The run's own policy (keep all) plans nothing to delete: another fingerprint.
    own = viewer.post_json("/api/v1/runs/seed/prune-preview").json()
    assert own["fingerprint"] != body["fingerprint"] and all(row["keep"] for row in own["plan"])

    # Viewers may preview but not prune.
    assert viewer.post_json("/api/v1/runs/seed/prune", {"fingerprint": body["fingerprint"],
                                                         "policy": {"max_to_keep": 2, "min_age_seconds": 0}}).status_code == 403
    started = maintainer.post_json("/api/v1/runs/seed/prune", {"fingerprint": body["fingerprint"],
                                                                "policy": {"max_to_keep": 2, "min_age_seconds": 0}})
    assert started.status_code == 202, started.content
    job = Job.objects.get(pk=started.json()["job"]["id"])
    assert job.params["fingerprint"] == body["fingerprint"] and job.requested_by == api_users["maintainer"]
    jobs.run_inline(job)  # the prune job's body, as a worker runs it
    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    pruned = set(Checkpoint.objects.filter(run=seed_run, status=Checkpoint.PRUNED).values_list("prefix", flat=True))
    assert pruned == set(deleted)
    # The only .meta (model.ckpt-100's) stays: the kept checkpoints restore with it.
    assert os.path.exists(os.path.join(seed_run.directory, "model.ckpt-100.meta"))
    assert os.path.exists(os.path.join(seed_run.directory, "model.ckpt-400.index"))


def test_prune_refuses_with_409_when_the_run_changed_since_the_preview(seed_run, api_users):
    maintainer = TokenClient(token_for(api_users["maintainer"], "maintainer"))
    preview = maintainer.post_json("/api/v1/runs/seed/prune-preview", {"max_to_keep": 1, "min_age_seconds": 0}).json()
    Checkpoint.objects.filter(run=seed_run, prefix="model.ckpt-100").update(pinned=True)  # someone pins one
    refused = maintainer.post_json("/api/v1/runs/seed/prune", {"fingerprint": preview["fingerprint"],
                                                                "policy": {"max_to_keep": 1, "min_age_seconds": 0}})
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["type"].endswith(":plan-changed") and "preview again" in problem["detail"]
    assert not Job.objects.filter(kind=Job.PRUNE).exists()
    assert not Checkpoint.objects.filter(run=seed_run, status=Checkpoint.PRUNED).exists()
    # A fingerprint of the run's own policy does not execute another policy's plan either.
    mismatched = maintainer.post_json("/api/v1/runs/seed/prune", {"fingerprint": preview["fingerprint"]})
    assert mismatched.status_code == 409


def test_a_bad_policy_is_a_400_naming_it(seed_run, api_users):
    viewer = TokenClient(token_for(api_users["viewer"], "viewer"))
    response = viewer.post_json("/api/v1/runs/seed/prune-preview", {"keep_best_n": 2})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "policy"
    response = viewer.post_json("/api/v1/runs/seed/prune-preview", {"max_to_keep": -1})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "max_to_keep"
