"""Pin and unpin (with a reason) from the history table and the checkpoint page; audited; maintainers only."""

from __future__ import annotations

import os
import re

import pytest
from django.urls import reverse

from dashboard import artifacts, locks, pruning, retention
from dashboard.models import AuditEvent, Checkpoint, Job
from tests.dashboard.test_prune_plan import fake_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(checkpoint_root):
    return fake_run(checkpoint_root / "r", "r", [1, 2, 3, 4], max_to_keep=1)


def pin_url(checkpoint: Checkpoint) -> str:
    return reverse("checkpoint-pin", args=[checkpoint.run.name, checkpoint.pk])


def test_pin_from_the_history_table_keeps_it_through_a_prune(client, maintainer, run):
    second = run.checkpoints.get(step=2)
    client.force_login(maintainer)
    history = client.get(reverse("run", args=["r"])).content.decode()
    assert pin_url(second) in history  # every row on disk has its pin form

    response = client.post(pin_url(second), {"action": "pin", "reason": "shipped as v3", "next": "/runs/r/?page=1"})

    assert response.status_code == 302 and response["Location"] == "/runs/r/?page=1"
    second.refresh_from_db()
    assert (second.pinned, second.pin_reason) == (True, "shipped as v3")
    event = AuditEvent.objects.get(action="pin")
    assert (event.actor, event.checkpoint, event.run) == (maintainer, second, run)
    assert event.summary == "Pinned model.ckpt-2: shipped as v3"

    decision = next(d for d in retention.plan_retention(run).decisions if d.prefix == "model.ckpt-2")
    assert decision.keep and decision.reasons == ["kept: pinned (shipped as v3)"]
    pruning.apply_plan(run, retention.plan_retention(run))
    assert os.path.exists(os.path.join(run.directory, "model.ckpt-2.index"))
    assert run.checkpoints.get(step=3).status == Checkpoint.PRUNED


def test_unpin_from_the_checkpoint_page_is_audited_with_what_it_was_pinned_for(client, maintainer, run):
    first = run.checkpoints.get(step=1)
    pruning.pin(first, "baseline", actor=maintainer)
    client.force_login(maintainer)
    page = client.get(first.get_absolute_url()).content.decode()
    assert "pinned: baseline" in page and ">Unpin</button>" in page

    response = client.post(pin_url(first), {"action": "unpin", "reason": "superseded"})

    assert response["Location"] == first.get_absolute_url()
    first.refresh_from_db()
    assert (first.pinned, first.pin_reason) == (False, "")
    event = AuditEvent.objects.get(action="unpin")
    assert event.summary == "Unpinned model.ckpt-1 (superseded); it was pinned for: baseline"


def test_a_pin_needs_a_reason(client, maintainer, run):
    checkpoint = run.checkpoints.get(step=2)
    client.force_login(maintainer)
    response = client.post(pin_url(checkpoint), {"action": "pin", "reason": "   "}, follow=True)
    assert "Say why this checkpoint is pinned" in response.content.decode()
    checkpoint.refresh_from_db()
    assert not checkpoint.pinned and not AuditEvent.objects.exists()


def test_viewers_and_operators_cannot_pin_and_see_no_pin_buttons(client, viewer, operator, run):
    checkpoint = run.checkpoints.get(step=2)
    for user in (viewer, operator):
        client.force_login(user)
        assert pin_url(checkpoint) not in client.get(reverse("run", args=["r"])).content.decode()
        assert pin_url(checkpoint) not in client.get(checkpoint.get_absolute_url()).content.decode()
        assert client.post(pin_url(checkpoint), {"action": "pin", "reason": "mine"}).status_code == 403
    checkpoint.refresh_from_db()
    assert not checkpoint.pinned


def test_only_a_checkpoint_on_disk_can_be_pinned(client, maintainer, run):
    gone = run.checkpoints.get(step=1)
    Checkpoint.objects.filter(pk=gone.pk).update(status=Checkpoint.PRUNED)
    client.force_login(maintainer)
    response = client.post(pin_url(gone), {"action": "pin", "reason": "too late"}, follow=True)
    assert "only a checkpoint on disk can be pinned" in response.content.decode()
    assert not Checkpoint.objects.get(pk=gone.pk).pinned


def test_a_pin_never_leaves_the_site(client, maintainer, run):
    checkpoint = run.checkpoints.get(step=2)
    client.force_login(maintainer)
    response = client.post(pin_url(checkpoint), {"action": "pin", "reason": "x", "next": "https://evil.example/"})
    assert response["Location"] == checkpoint.get_absolute_url()


def test_pin_and_make_latest_wait_for_a_running_prune(client, maintainer, run):
    # A prune that has planned must not delete what is pinned (or made latest) after it planned.
    holder = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.RUNNING, result={"holder": {"pid": os.getpid()}})
    checkpoint = run.checkpoints.get(step=2)
    client.force_login(maintainer)
    with locks.run_lock(run):  # what a running prune holds
        response = client.post(pin_url(checkpoint), {"action": "pin", "reason": "x"}, follow=True)
        assert f"A prune of run r is running (job #{holder.pk})" in response.content.decode()
        assert not Checkpoint.objects.get(pk=checkpoint.pk).pinned
        with pytest.raises(ValueError, match="A prune of run r is running"):
            artifacts.make_latest(run, checkpoint, user=maintainer)

    # A holder whose lock is gone (its process died: kill -9 frees it) holds nothing; its job is
    # failed on the way.
    pruning.pin(checkpoint, "now it can", actor=maintainer)
    assert Checkpoint.objects.get(pk=checkpoint.pk).pinned
    holder.refresh_from_db()
    assert holder.status == Job.FAILED and "died" in holder.error


def test_each_pin_form_of_the_history_table_posts_with_its_csrf_token(maintainer, run):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(maintainer)
    second = run.checkpoints.get(step=2)
    history = browser.get(reverse("run", args=["r"])).content.decode()
    form = re.search(rf'<form method="post" action="{pin_url(second)}" class="inline">'
                     r'<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">', history)
    assert form, "no pin form with a CSRF token for step 2"

    response = browser.post(pin_url(second), {"csrfmiddlewaretoken": form.group(1), "action": "pin",
                                              "reason": "kept for the paper", "next": "/runs/r/"})

    assert response.status_code == 302
    second.refresh_from_db()
    assert second.pinned


def test_history_rows_escape_what_people_and_files_named(client, maintainer, run):
    pinned = run.checkpoints.get(step=2)
    pruning.pin(pinned, '<b>"v3"</b> & co', actor=maintainer)
    run.checkpoints.filter(step=1).update(prefix='model.ckpt-1<i>&"')
    client.force_login(maintainer)

    history = client.get(reverse("run", args=["r"])).content.decode()

    assert 'title="&lt;b&gt;&quot;v3&quot;&lt;/b&gt; &amp; co">pinned</span>' in history
    assert 'title="Pinned: &lt;b&gt;&quot;v3&quot;&lt;/b&gt; &amp; co">Unpin</button>' in history
    assert "<code>model.ckpt-1&lt;i&gt;&amp;&quot;</code>" in history
    assert "<b>" not in history and "<i>" not in history
