"""Aliases: moved by maintainers (page, command), audited from step to step, and never pruned or rotated out."""

from __future__ import annotations

import io
import os

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dashboard import aliases, pruning, retention, saving
from dashboard.models import Alias, AuditEvent, Checkpoint, Export, Job, Run
from tests.dashboard.test_prune_plan import fake_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(checkpoint_root):
    return fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4], max_to_keep=1)


def alias_url(checkpoint: Checkpoint) -> str:
    return reverse("checkpoint-alias", args=[checkpoint.run.name, checkpoint.pk])


def test_alias_moves_are_audited_from_step_to_step_and_shown_as_a_timeline(client, maintainer, run):
    client.force_login(maintainer)
    second, third = run.checkpoints.get(step=2), run.checkpoints.get(step=3)

    assert client.post(alias_url(second), {"alias": "prod"}).status_code == 302
    assert client.post(alias_url(third), {"alias": "prod"}).status_code == 302

    alias = Alias.objects.get(run=run, name="prod")
    assert alias.checkpoint == third and alias.updated_by == maintainer
    moves = list(AuditEvent.objects.filter(action="alias").order_by("at", "pk"))
    assert [(e.details["from_step"], e.details["to_step"], e.actor) for e in moves] == [
        (None, 2, maintainer), (2, 3, maintainer)]
    assert moves[1].summary == "Alias prod of r: step 2 → step 3"

    fragment = client.get(reverse("run-aliases", args=["r"])).content.decode()
    assert "Alias prod of r: step 2 → step 3" in fragment and "Alias prod of r: nothing → step 2" in fragment
    page = client.get(third.get_absolute_url()).content.decode()
    assert 'class="badge alias">prod<' in page
    assert client.get(reverse("run", args=["r"])).content.decode().count(reverse("run-aliases", args=["r"])) == 1


def test_an_aliased_checkpoint_is_kept_by_the_plan_with_its_reason_and_survives_the_prune(run):
    aliases.set_alias(run, "canary", run.checkpoints.get(step=2))
    decision = next(d for d in retention.plan_retention(run).decisions if d.step == 2)
    assert decision.keep and decision.reasons == ["kept: alias canary"]

    pruning.apply_plan(run, retention.plan_retention(run))

    assert os.path.exists(os.path.join(run.directory, "model.ckpt-2.index"))
    assert run.checkpoints.get(step=2).status == Checkpoint.PRESENT
    assert run.checkpoints.get(step=3).status == Checkpoint.PRUNED


def test_an_alias_set_after_a_prune_planned_stops_that_plan(run, maintainer):
    """A prune killed after recording its plan is finished by its retry: an alias set in between
    must still keep its checkpoint (the retry re-checks before deleting)."""
    plan = retention.plan_retention(run)
    assert 2 in [d.step for d in plan.decisions if not d.keep]
    first = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.FAILED, requested_by=maintainer,
                               result={"plan": plan.to_dict(), "policy": {}})
    aliases.set_alias(run, "prod", run.checkpoints.get(step=2), actor=maintainer)
    retry = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.RUNNING, retry_of=first, requested_by=maintainer)

    with pytest.raises(Run.PruneRefused, match="now pinned, latest, exported or aliased"):
        pruning.prune(run, retry)

    assert all(os.path.exists(os.path.join(run.directory, f"model.ckpt-{s}.index")) for s in (1, 2, 3, 4))


def test_a_save_jobs_rotation_never_takes_an_aliased_checkpoint(run):
    aliases.set_alias(run, "best", run.checkpoints.get(step=1))
    reasons = saving.protection_reasons(run, ["model.ckpt-1", "model.ckpt-3"], state_file="checkpoint")
    assert "alias best" in reasons["model.ckpt-1"] and "model.ckpt-3" not in reasons
    guard = saving.rotation_guard(run, own={"model.ckpt-1", "model.ckpt-3"}, state_file="checkpoint")
    assert guard("model.ckpt-1") and guard("model.ckpt-3") is None


def test_only_maintainers_move_aliases(client, operator, viewer, run):
    second = run.checkpoints.get(step=2)
    for user in (operator, viewer):
        client.force_login(user)
        assert client.post(alias_url(second), {"alias": "prod"}).status_code == 403
        assert 'action="' + alias_url(second) not in client.get(second.get_absolute_url()).content.decode()
    assert not Alias.objects.exists()


def test_bad_names_and_gone_checkpoints_are_refused_with_a_message(client, maintainer, run):
    client.force_login(maintainer)
    second = run.checkpoints.get(step=2)
    page = client.post(alias_url(second), {"alias": "Prod Env"}, follow=True).content.decode()
    assert "alias &#x27;prod env&#x27;: Lower-case letters" in page
    run.checkpoints.filter(step=2).update(status=Checkpoint.PRUNED)
    page = client.post(alias_url(second), {"alias": "prod"}, follow=True).content.decode()
    assert "an alias must point at a checkpoint on disk" in page
    assert not Alias.objects.exists()


def test_alias_command_points_and_removes(run):
    out = io.StringIO()
    call_command("alias", "r", "prod", "3", stdout=out)
    assert "alias prod of r -> model.ckpt-3 (step 3)" in out.getvalue()
    assert Alias.objects.get().checkpoint.step == 3
    with pytest.raises(CommandError, match="no checkpoint of step 99"):
        call_command("alias", "r", "prod", "99")
    call_command("alias", "r", "prod", "--remove", stdout=io.StringIO())
    assert not Alias.objects.exists()
    assert AuditEvent.objects.filter(action="alias").count() == 2


def test_export_list_filters_by_alias(client, viewer, run):
    third, fourth = run.checkpoints.get(step=3), run.checkpoints.get(step=4)
    for checkpoint in (third, fourth):
        Export.objects.create(checkpoint=checkpoint, path=f"/exports/r/{checkpoint.step}/probs.pb", sha256="0" * 64)
    aliases.set_alias(run, "prod", third)
    client.force_login(viewer)
    page = client.get(reverse("exports"), {"alias": "prod"}).content.decode()
    assert f'href="{third.get_absolute_url()}">3<' in page and f'href="{fourth.get_absolute_url()}">4<' not in page
