"""Webhook endpoints on their pages, and what recording an event stores (no worker needed).

Registration refuses receivers the address guard refuses; only maintainers see or change
anything; the secret is shown once; emitting is one cached query when nobody listens, is about
the objects as the API shows them, and vanishes with a rolled-back transaction.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from dashboard import jobs, pruning, representations, retention, webhooks
from dashboard.models import AuditEvent, Checkpoint, Job, WebhookDelivery, WebhookEndpoint
from tests.dashboard.test_prune_plan import fake_run
from tests.dashboard.webhook_receiver import readme_verifier

PUBLIC = "https://93.184.215.14/hooks/checkpoints"  # an address literal: no DNS needed


@pytest.fixture(autouse=True)
def _guard_on(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    webhooks.forget_subscriptions()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8000/hook", "http://localhost:8000/hook",
])
def test_registration_refuses_internal_receivers(db, url):
    with pytest.raises(webhooks.InvalidEndpoint) as refused:
        webhooks.create_endpoint(url=url, events=[webhooks.JOB_FAILED])
    assert refused.value.field == "url"
    assert not WebhookEndpoint.objects.exists()


def test_the_setting_allows_loopback_receivers(db, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    endpoint, secret = webhooks.create_endpoint(url="http://127.0.0.1:8000/hook", events=[webhooks.JOB_FAILED])
    assert endpoint.secret == secret and secret.startswith("whsec_") and len(secret) > 40


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_maintainers_reach_the_webhook_pages(client, role, request):
    user = request.getfixturevalue(role)
    endpoint, _ = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event=webhooks.JOB_FAILED, event_id="evt_1",
                                              payload={"id": "evt_1"}, state=WebhookDelivery.DELIVERED)
    client.force_login(user)
    assert "Webhooks</a>" not in client.get(reverse("runs")).content.decode()
    for name, args in [("webhooks", []), ("webhook-new", []), ("webhook", [endpoint.pk]),
                       ("webhook-edit", [endpoint.pk])]:
        assert client.get(reverse(name, args=args)).status_code == 403, name
    for name, args in [("webhook-new", []), ("webhook-secret", [endpoint.pk]), ("webhook-delete", [endpoint.pk]),
                       ("webhook-redeliver", [endpoint.pk, delivery.pk]), ("webhook-ping", [endpoint.pk])]:
        assert client.post(reverse(name, args=args), {"url": PUBLIC, "events": ["job.failed"]}).status_code == 403
    assert WebhookEndpoint.objects.get().secret == endpoint.secret
    assert WebhookDelivery.objects.count() == 1


def test_a_maintainer_adds_an_endpoint_and_sees_its_secret_once(client, maintainer):
    client.force_login(maintainer)
    assert "Webhooks</a>" in client.get(reverse("runs")).content.decode()

    refused = client.post(reverse("webhook-new"), {"url": "http://10.0.0.5/hook", "events": ["job.failed"],
                                                   "active": "on"})
    assert refused.status_code == 200 and "private address" in refused.content.decode()
    assert not WebhookEndpoint.objects.exists()

    response = client.post(reverse("webhook-new"), {
        "url": PUBLIC, "events": ["export.verified", "job.failed"], "description": "deploy", "active": "on",
    })
    endpoint = WebhookEndpoint.objects.get()
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert endpoint.secret in response.content.decode()
    assert (endpoint.url, endpoint.events, endpoint.active, endpoint.created_by) == (
        PUBLIC, ["export.verified", "job.failed"], True, maintainer)

    detail = client.get(reverse("webhook", args=[endpoint.pk])).content.decode()
    listing = client.get(reverse("webhooks")).content.decode()
    audit = client.get(reverse("audit")).content.decode()
    for page in (detail, listing, audit):
        assert endpoint.secret not in page
    assert endpoint.secret[:10] in detail and PUBLIC in listing
    assert AuditEvent.objects.filter(action="webhook_created", actor=maintainer).exists()


def test_a_chosen_secret_is_kept_and_a_new_one_replaces_it(client, maintainer):
    client.force_login(maintainer)
    chosen = "a-secret-of-our-own-choosing-1234"
    client.post(reverse("webhook-new"), {"url": PUBLIC, "events": ["job.failed"], "active": "on",
                                         "secret": chosen})
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret == chosen

    response = client.post(reverse("webhook-secret", args=[endpoint.pk]))
    endpoint.refresh_from_db()
    assert endpoint.secret != chosen and endpoint.secret in response.content.decode()
    assert chosen not in response.content.decode()


def test_a_maintainer_edits_disables_and_deletes_an_endpoint(client, maintainer):
    client.force_login(maintainer)
    endpoint, secret = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    response = client.post(reverse("webhook-edit", args=[endpoint.pk]), {
        "url": PUBLIC.replace("checkpoints", "ml"), "events": ["retention.pruned"], "description": "",
    })
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.events == ["retention.pruned"] and not endpoint.active and endpoint.secret == secret
    assert webhooks.emit(webhooks.RETENTION_PRUNED, {"prune": {}}) == 0  # disabled: nothing recorded

    assert client.post(reverse("webhook-delete", args=[endpoint.pk])).status_code == 302
    assert not WebhookEndpoint.objects.exists()


def test_the_delivery_log_shows_every_attempt_and_redeliver_queues_the_same_event(client, maintainer):
    client.force_login(maintainer)
    endpoint, _ = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    attempts = [{"at": "2026-01-01T00:00:00+00:00", "status": 503, "duration_ms": 12, "excerpt": "busy",
                 "error": "", "address": "93.184.215.14"},
                {"at": "2026-01-01T00:00:30+00:00", "status": None, "duration_ms": 3000, "excerpt": "",
                 "error": "TimeoutError: timed out", "address": ""}]
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event=webhooks.JOB_FAILED, event_id="evt_abc",
                                              payload={"id": "evt_abc", "event": "job.failed"},
                                              attempts=attempts, state=WebhookDelivery.FAILED)
    page = client.get(reverse("webhook", args=[endpoint.pk])).content.decode()
    assert "evt_abc" in page and "503" in page and "busy" in page and "TimeoutError: timed out" in page

    response = client.post(reverse("webhook-redeliver", args=[endpoint.pk, delivery.pk]))
    assert response.status_code == 302
    again = WebhookDelivery.objects.exclude(pk=delivery.pk).get()
    assert (again.event_id, again.payload, again.state, again.redelivery_of) == (
        "evt_abc", delivery.payload, WebhookDelivery.PENDING, delivery)


def test_emitting_with_no_endpoint_is_one_cached_query_and_reads_no_objects(db, django_assert_num_queries):
    run = fake_run_rows()
    with django_assert_num_queries(1):  # which events anyone wants; the queryset is never evaluated
        assert webhooks.emit(webhooks.CHECKPOINT_RECORDED, run.checkpoints.all()) == 0
    with django_assert_num_queries(0):
        for _ in range(1000):
            webhooks.emit(webhooks.CHECKPOINT_RECORDED, run.checkpoints.all())


def test_an_endpoint_gets_only_the_events_it_chose(db):
    webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    run = fake_run_rows()
    assert webhooks.emit(webhooks.CHECKPOINT_RECORDED, run.checkpoints.all()) == 0
    assert not WebhookDelivery.objects.exists()


def test_each_object_becomes_one_event_per_endpoint_shaped_as_the_api_shows_it(db):
    first, _ = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.CHECKPOINT_RECORDED])
    second, _ = webhooks.create_endpoint(url=PUBLIC + "/2", events=[webhooks.CHECKPOINT_RECORDED,
                                                                   webhooks.JOB_FAILED])
    run = fake_run_rows()

    assert webhooks.emit(webhooks.CHECKPOINT_RECORDED, run.checkpoints.order_by("step")) == 6

    rows = list(WebhookDelivery.objects.order_by("pk"))
    assert {r.endpoint_id for r in rows} == {first.pk, second.pk}
    by_event = {}
    for row in rows:
        by_event.setdefault(row.event_id, []).append(row)
    assert len(by_event) == 3 and all(len(pair) == 2 for pair in by_event.values())
    for checkpoint in run.checkpoints.all():
        [body] = {r.event_id: r.payload for r in rows if r.payload["checkpoint"]["id"] == checkpoint.pk}.values()
        assert set(body) == {"id", "event", "created_at", "checkpoint"} and body["event"] == "checkpoint.recorded"
        assert body["checkpoint"] == {**representations.checkpoint_item(checkpoint), "run": run.name}
    assert all(r.state == WebhookDelivery.PENDING and r.next_attempt_at for r in rows)


def test_a_rolled_back_change_records_and_sends_nothing(db, django_capture_on_commit_callbacks):
    webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    job = Job.objects.create(kind=Job.SCAN, status=Job.FAILED, ended_at=timezone.now())
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            assert webhooks.emit(webhooks.JOB_FAILED, job) == 1
            raise RuntimeError("the change failed")
    assert callbacks == [] and not WebhookDelivery.objects.exists()

    with django_capture_on_commit_callbacks() as callbacks:
        webhooks.emit(webhooks.JOB_FAILED, job)
    assert len(callbacks) == 1 and WebhookDelivery.objects.count() == 1


def test_a_prune_records_retention_pruned_with_what_it_deleted(db, checkpoint_root):
    webhooks.create_endpoint(url=PUBLIC, events=[webhooks.RETENTION_PRUNED])
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 7)), max_to_keep=2)
    plan = retention.plan_retention(run)

    pruning.apply_plan(run, plan)

    [row] = WebhookDelivery.objects.all()
    event = AuditEvent.objects.get(action="prune")
    assert row.event == "retention.pruned"
    assert row.payload["run"] == representations.run_item(run)
    assert sorted(row.payload["prune"]["deleted"]) == sorted(plan.deleted_prefixes)
    assert row.payload["prune"]["bytes_freed"] == plan.bytes_freed == event.bytes_freed
    assert row.payload["prune"]["audit_event"] == event.pk
    assert run.checkpoints.filter(status=Checkpoint.PRUNED).count() == len(plan.deleted_prefixes) == 4


def test_the_readme_snippet_verifies_what_deliveries_sign():
    verify = readme_verifier()
    secret, body = webhooks.generate_secret(), webhooks.body_bytes({"id": "evt_1", "event": "job.failed"})
    header = webhooks.signature(secret, int(time.time()), body)
    assert verify(secret, header, body)
    assert not verify(secret, header, body + b" ")
    stale = webhooks.signature(secret, int(time.time()) - 3600, body)
    assert not verify(secret, stale, body)  # an old signature (a replay) is refused


def fake_run_rows():
    from dashboard.models import Run
    from tests.dashboard.conftest import add_checkpoint_rows

    run = Run.objects.create(name=f"rows-{Run.objects.count()}", directory="/nonexistent")
    add_checkpoint_rows(run, 3)
    return run


@pytest.mark.django_db(transaction=True)  # the reconciler closes stale connections, as a worker job does
def test_the_reconciler_failing_a_job_records_job_failed():
    webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    # Running, but the queue has never heard of it (Redis was flushed under it).
    job = Job.objects.create(kind=Job.SCAN, status=Job.RUNNING, rq_job_id="job-987654321", started_at=timezone.now())

    assert job.pk in jobs.reconcile_jobs()["failed"]

    [row] = WebhookDelivery.objects.all()
    job.refresh_from_db()
    assert row.payload["job"] == representations.job_item(job) and row.payload["job"]["status"] == "failed"
    assert "lost this job" in row.payload["job"]["error"]


@pytest.mark.django_db(transaction=True)  # dispatch_due closes stale connections, as a worker job does
def test_finished_deliveries_leave_the_log_after_the_kept_days_and_pending_ones_never(settings):
    settings.WEBHOOK_LOG_DAYS = 30
    endpoint, _ = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
    old, recent = timezone.now() - dt.timedelta(days=31), timezone.now() - dt.timedelta(days=29)
    rows = {}
    for name, state, created in [("old-delivered", WebhookDelivery.DELIVERED, old),
                                 ("old-failed", WebhookDelivery.FAILED, old),
                                 ("old-pending", WebhookDelivery.PENDING, old),
                                 ("recent-failed", WebhookDelivery.FAILED, recent)]:
        rows[name] = WebhookDelivery.objects.create(
            endpoint=endpoint, event=webhooks.JOB_FAILED, event_id=name, payload={"id": name}, state=state,
            created_at=created, next_attempt_at=timezone.now() + dt.timedelta(hours=1) if state == "pending" else None,
        )
    again = WebhookDelivery.objects.create(endpoint=endpoint, event=webhooks.JOB_FAILED, event_id="old-failed",
                                           payload={"id": "old-failed"}, redelivery_of=rows["old-failed"])

    webhooks.dispatch_due()

    left = set(WebhookDelivery.objects.values_list("event_id", flat=True))
    assert left == {"old-pending", "recent-failed", "old-failed"}
    again.refresh_from_db()
    assert again.redelivery_of is None  # the redelivery stays, without its gone original


def test_the_default_retry_schedule_outlasts_a_receiver_down_for_ten_minutes():
    from dashboard import settings as project

    schedule = project._env_schedule("WEBHOOK_SCHEDULE_NOT_SET_HERE", project._DEFAULT_RETRY_SCHEDULE)
    assert len(schedule) + 1 >= 5 and sum(schedule) >= 30 * 60  # at least 5 tries over at least 30 min
    # The try after the first one that comes 10 minutes or more after the event still comes.
    elapsed = [sum(schedule[:i]) for i in range(1, len(schedule) + 1)]
    assert any(t >= 10 * 60 for t in elapsed[:-1])
