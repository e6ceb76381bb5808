"""Webhook deliveries through a real worker, the real scheduler, real Redis and a real receiver.

The worker and the scheduler (``manage.py rqcron dashboard.cron``) run for the whole module with
a short retry schedule and dispatch interval, and with loopback receivers allowed (the receiver
is ``http.server`` on 127.0.0.1). Everything else is as deployed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from django.utils import timezone

from dashboard import jobs, representations, scanning, webhooks
from dashboard.models import Export, Job, Run, WebhookDelivery, WebhookEndpoint
from tests.dashboard.webhook_receiver import Receiver, readme_verifier
from tests.live import BASE_DIR, free_port, module_roots, module_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

RETRIES = 10
PROCESS_ENV = {
    "WEBHOOK_ALLOW_PRIVATE": "1",
    "WEBHOOK_RETRY_SCHEDULE": ",".join(["1"] * RETRIES),
    "WEBHOOK_DISPATCH_SECONDS": "1",
    "WEBHOOK_TIMEOUT_SECONDS": "3",
    "SCAN_INTERVAL_SECONDS": "0",
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "webhook-roots") as base:
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    with module_worker(django_db_blocker, tmp_path_factory, **PROCESS_ENV) as live:
        yield live


@pytest.fixture(scope="module")
def scheduler(worker, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("scheduler") / "scheduler.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "rqcron", "dashboard.cron"],
            cwd=BASE_DIR, env=subprocess_env(**PROCESS_ENV), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_RETRY_SCHEDULE = [1.0] * RETRIES
    webhooks.forget_subscriptions()  # endpoints of earlier tests were flushed with their tables


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("webhook-demo") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


def register(roots, template) -> Run:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    shutil.copytree(template, roots / "checkpoints" / name)
    run = Run.objects.create(name=name, directory=str(roots / "checkpoints" / name))
    scanning.scan(run)
    return run


def endpoint_for(receiver: Receiver, *events: str) -> tuple[WebhookEndpoint, str]:
    return webhooks.create_endpoint(url=receiver.url(), events=list(events))


def delivered(delivery: WebhookDelivery, timeout: float = 60) -> WebhookDelivery:
    def done():
        delivery.refresh_from_db()
        return delivery.state in (WebhookDelivery.DELIVERED, WebhookDelivery.FAILED)

    wait_for(done, timeout, interval=0.1, what=f"delivery {delivery.pk} to end (now {delivery.state})")
    return delivery


def a_failed_job() -> Job:
    return Job.objects.create(kind=Job.SCAN, status=Job.FAILED, error="disk on fire", ended_at=timezone.now())


def test_a_freeze_sends_a_signed_export_verified_that_the_readme_snippet_verifies(roots, demo_template, worker,
                                                                                   scheduler):
    verify = readme_verifier()
    run = register(roots, demo_template)
    with Receiver() as receiver:
        endpoint, secret = endpoint_for(receiver, webhooks.EXPORT_VERIFIED, webhooks.JOB_FAILED)
        job = jobs.start(Job.FREEZE, run=run, checkpoint=run.checkpoints.get(step=50), params={"outputs": ["probs"]})

        [got] = receiver.wait_for(webhooks.EXPORT_VERIFIED, timeout=120)

    export = Export.objects.select_related("checkpoint__run").get()
    assert Job.objects.get(pk=job.pk).status == Job.FINISHED
    body = got.json
    assert set(body) == {"id", "event", "created_at", "export"}
    assert body["event"] == "export.verified" and body["export"] == representations.export_item(export)
    assert body["export"]["verified"] is True and body["export"]["sha256"] == export.sha256
    assert got.headers["Content-Type"] == "application/json" and got.headers["X-Webhook-Id"] == body["id"]
    assert got.path == "/hook"
    # Signed with this endpoint's secret, over these exact bytes; anything else fails the check.
    signature = got.headers["X-Webhook-Signature"]
    assert verify(secret, signature, got.body)
    assert not verify(secret, signature, got.body.replace(b"true", b"false"))
    assert not verify(webhooks.generate_secret(), signature, got.body)
    [row] = WebhookDelivery.objects.filter(endpoint=endpoint)
    assert row.state == WebhookDelivery.DELIVERED and [a["status"] for a in row.attempts] == [200]
    assert row.attempts[0]["duration_ms"] >= 0 and '"answered": 200' in row.attempts[0]["excerpt"]


def test_a_failed_freeze_sends_job_failed_and_no_export_event(roots, demo_template, worker, scheduler):
    verify = readme_verifier()
    run = register(roots, demo_template)
    with Receiver() as receiver:
        _, secret = endpoint_for(receiver, webhooks.EXPORT_VERIFIED, webhooks.JOB_FAILED)
        job = jobs.start(Job.FREEZE, run=run, checkpoint=run.checkpoints.get(step=50),
                         params={"outputs": ["no_such_node"]})

        [got] = receiver.wait_for(webhooks.JOB_FAILED, timeout=120)

    job.refresh_from_db()
    assert job.status == Job.FAILED and "no_such_node" in job.error
    assert got.json["job"] == {**representations.job_item(job)} and got.json["job"]["status"] == "failed"
    assert verify(secret, got.headers["X-Webhook-Signature"], got.body)
    assert receiver.events(webhooks.EXPORT_VERIFIED) == []


def test_a_scan_sends_checkpoint_recorded_for_each_new_checkpoint(roots, demo_template, worker, scheduler):
    name = f"scan-{uuid.uuid4().hex[:6]}"
    shutil.copytree(demo_template, roots / "checkpoints" / name)
    run = Run.objects.create(name=name, directory=str(roots / "checkpoints" / name))
    with Receiver() as receiver:
        endpoint_for(receiver, webhooks.CHECKPOINT_RECORDED)
        jobs.start(Job.SCAN, run=run)
        got = receiver.wait_for(webhooks.CHECKPOINT_RECORDED, count=2, timeout=120)
        # A rescan of an unchanged directory records nothing new, so it sends nothing.
        job = jobs.start(Job.SCAN, run=run, params={"full": True})
        wait_for(lambda: Job.objects.get(pk=job.pk).is_ended, 60, what="the rescan")

    assert len(receiver.events()) == 2
    steps = sorted(r.json["checkpoint"]["step"] for r in got)
    assert steps == [25, 50] and {r.json["checkpoint"]["run"] for r in got} == {name}
    assert {r.json["checkpoint"]["id"] for r in got} == set(run.checkpoints.values_list("id", flat=True))


def test_a_receiver_answering_500_three_times_gets_the_event_once_with_four_attempts_logged(worker, scheduler):
    with Receiver([500, 500, 500, 200]) as receiver:
        endpoint, _ = endpoint_for(receiver, webhooks.JOB_FAILED)
        job = a_failed_job()
        assert webhooks.emit(webhooks.JOB_FAILED, job) == 1
        row = delivered(WebhookDelivery.objects.get(endpoint=endpoint), timeout=60)

    assert row.state == WebhookDelivery.DELIVERED
    assert [a["status"] for a in row.attempts] == [500, 500, 500, 200]
    assert all(a["at"] and a["duration_ms"] is not None for a in row.attempts)
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]  # accepted exactly once
    assert {r.headers["X-Webhook-Id"] for r in receiver.requests} == {row.event_id}  # one event, four tries
    assert [r.headers["X-Webhook-Attempt"] for r in receiver.requests] == ["1", "2", "3", "4"]
    times = [dt.datetime.fromisoformat(a["at"]) for a in row.attempts]
    assert all(later - earlier >= dt.timedelta(seconds=1) for earlier, later in zip(times, times[1:], strict=False))


def test_a_receiver_that_is_down_then_up_gets_the_event(worker, scheduler):
    port = free_port()  # nothing listens there yet
    endpoint, _ = webhooks.create_endpoint(url=f"http://127.0.0.1:{port}/hook", events=[webhooks.JOB_FAILED])
    webhooks.emit(webhooks.JOB_FAILED, a_failed_job())
    row = WebhookDelivery.objects.get(endpoint=endpoint)
    wait_for(lambda: len(WebhookDelivery.objects.get(pk=row.pk).attempts) >= 2, 30, what="two failed attempts")

    with Receiver(port=port) as receiver:
        row = delivered(row, timeout=30)
        assert row.state == WebhookDelivery.DELIVERED
        assert len(receiver.events(webhooks.JOB_FAILED)) == 1

    refused = row.attempts[:-1]
    assert len(refused) >= 2 and all(a["status"] is None and "Connection" in a["error"] for a in refused)
    assert row.attempts[-1]["status"] == 200


def test_redirects_are_not_followed(worker, scheduler):
    with Receiver([302]) as receiver:
        endpoint, _ = endpoint_for(receiver, webhooks.JOB_FAILED)
        webhooks.emit(webhooks.JOB_FAILED, a_failed_job())
        row = delivered(WebhookDelivery.objects.get(endpoint=endpoint))

    assert row.state == WebhookDelivery.FAILED
    assert [a["status"] for a in row.attempts] == [302] and "not followed" in row.attempts[0]["error"]
    assert [r.path for r in receiver.requests] == ["/hook"]  # never /redirected-here


def test_a_client_error_is_not_retried_and_redeliver_sends_the_same_event_again(worker, scheduler):
    with Receiver([410]) as receiver:
        endpoint, _ = endpoint_for(receiver, webhooks.JOB_FAILED)
        webhooks.emit(webhooks.JOB_FAILED, a_failed_job())
        first = delivered(WebhookDelivery.objects.select_related("endpoint").get(endpoint=endpoint))
        assert first.state == WebhookDelivery.FAILED and [a["status"] for a in first.attempts] == [410]

        again = delivered(webhooks.redeliver(first))

    assert again.state == WebhookDelivery.DELIVERED and again.redelivery_of_id == first.pk
    assert [r.status for r in receiver.requests] == [410, 200]
    assert receiver.requests[0].body == receiver.requests[1].body  # same event id, same body
    assert again.event_id == first.event_id


def test_an_address_refused_at_delivery_time_is_not_contacted(worker, scheduler):
    # Saved before the guard could see it (or DNS changed since): every delivery checks again.
    endpoint = WebhookEndpoint.objects.create(url="http://169.254.169.254/latest/meta-data/",
                                              secret=webhooks.generate_secret(), events=[webhooks.JOB_FAILED])
    webhooks.forget_subscriptions()
    webhooks.emit(webhooks.JOB_FAILED, a_failed_job())
    row = delivered(WebhookDelivery.objects.get(endpoint=endpoint))

    assert row.state == WebhookDelivery.FAILED and len(row.attempts) == 1
    assert row.attempts[0]["status"] is None and "metadata" in row.attempts[0]["error"]


def test_a_delivery_whose_worker_died_mid_attempt_is_attempted_again(worker, scheduler):
    with Receiver() as receiver:
        endpoint, _ = endpoint_for(receiver, webhooks.JOB_FAILED)
        long_ago = timezone.now() - dt.timedelta(hours=1)
        # What a worker killed while sending leaves behind.
        row = WebhookDelivery.objects.create(
            endpoint=endpoint, event=webhooks.JOB_FAILED, event_id="evt_orphan", payload={"id": "evt_orphan"},
            state=WebhookDelivery.SENDING, claimed_at=long_ago, created_at=long_ago,
        )
        row = delivered(row, timeout=30)

    assert row.state == WebhookDelivery.DELIVERED
    assert "stopped before recording" in row.attempts[0]["error"] and row.attempts[1]["status"] == 200
    assert [r.headers["X-Webhook-Id"] for r in receiver.requests] == ["evt_orphan"]


def test_a_test_event_reaches_the_receiver_signed(worker, scheduler):
    verify = readme_verifier()
    with Receiver() as receiver:
        endpoint, secret = endpoint_for(receiver, webhooks.RETENTION_PRUNED)
        row = delivered(webhooks.send_test_event(endpoint))
        [got] = receiver.events("ping")

    assert row.state == WebhookDelivery.DELIVERED
    assert got.json["endpoint"] == representations.webhook_endpoint_item(endpoint)
    assert secret not in got.body.decode()  # the body names the endpoint, never its secret
    assert verify(secret, got.headers["X-Webhook-Signature"], got.body)


def test_an_event_the_queue_missed_is_still_delivered(worker, scheduler, settings):
    with Receiver() as receiver:
        endpoint, _ = endpoint_for(receiver, webhooks.JOB_FAILED)
        # This process cannot reach Redis when the event commits (the worker and scheduler can).
        unreachable = f"redis://127.0.0.1:{free_port()}/0"
        settings.RQ_QUEUES = {name: {**conf, "URL": unreachable} for name, conf in settings.RQ_QUEUES.items()}
        assert webhooks.emit(webhooks.JOB_FAILED, a_failed_job()) == 1
        row = delivered(WebhookDelivery.objects.get(endpoint=endpoint), timeout=30)

    assert row.state == WebhookDelivery.DELIVERED and [a["status"] for a in row.attempts] == [200]
    assert len(receiver.events(webhooks.JOB_FAILED)) == 1


def test_verifying_a_damaged_checkpoint_sends_checkpoint_corrupt(roots, demo_template, worker, scheduler):
    run = register(roots, demo_template)
    checkpoint = run.checkpoints.get(step=50)
    path = checkpoint.path + ".data-00000-of-00001"
    with open(path, "r+b") as handle:  # one flipped bit: TensorFlow's CRC check finds it on read
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    with Receiver() as receiver:
        endpoint_for(receiver, webhooks.CHECKPOINT_CORRUPT)
        jobs.start(Job.RESTORE, run=run, checkpoint=checkpoint)
        [got] = receiver.wait_for(webhooks.CHECKPOINT_CORRUPT, timeout=120)

    checkpoint.refresh_from_db()
    assert checkpoint.status == "corrupt"
    assert got.json["checkpoint"] == {**representations.checkpoint_item(checkpoint), "run": run.name}
