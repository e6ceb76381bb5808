"""Flow: a maintainer adds a webhook endpoint, copies its secret (shown once), reads the delivery
log with every attempt, and redelivers an event."""

from __future__ import annotations

import pytest

from dashboard import webhooks
from dashboard.models import WebhookDelivery, WebhookEndpoint

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Nothing listens there, and nothing is sent anyway: the session's worker refuses loopback
# receivers (only this test's web server allows them).
RECEIVER = "http://127.0.0.1:9/hooks/ci"


def test_a_maintainer_adds_an_endpoint_reads_its_log_and_redelivers(tracked, e2e_maintainer, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    page = tracked.page
    tracked.login(e2e_maintainer.username)

    page.get_by_role("link", name="Webhooks").click()
    page.get_by_role("button", name="Add endpoint").click()  # a link styled as a button
    page.fill("input[name=url]", "http://169.254.169.254/latest/meta-data/")
    page.get_by_label("export.verified").check()
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_text("cloud metadata address").wait_for()  # refused, with the reason
    assert not WebhookEndpoint.objects.exists()

    page.fill("input[name=url]", RECEIVER)
    page.get_by_label("job.failed").check()
    page.get_by_role("button", name="Add endpoint").click()
    shown = page.locator("#webhook-secret").inner_text().strip()
    endpoint = WebhookEndpoint.objects.get()
    assert shown == endpoint.secret and sorted(endpoint.events) == ["export.verified", "job.failed"]
    tracked.shot("webhook-secret")

    # What the worker would have logged after three tries of a receiver that was down.
    attempts = [{"at": f"2026-01-01T00:0{i}:00+00:00", "status": 503, "duration_ms": 40 + i, "excerpt": "down",
                 "error": "", "address": "127.0.0.1"} for i in range(3)]
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event=webhooks.JOB_FAILED, event_id="evt_e2e",
                                              payload={"id": "evt_e2e", "event": "job.failed"},
                                              attempts=attempts, state=WebhookDelivery.FAILED)
    page.get_by_role("button", name="Done").click()
    page.wait_for_selector(f"#delivery-{delivery.pk}")
    assert shown not in page.content()  # never shown again
    log = page.locator(f"#delivery-{delivery.pk}")
    assert log.locator("table.attempts tbody tr").count() == 3 and "evt_e2e" in log.inner_text()
    tracked.shot("webhook-log")

    log.get_by_role("button", name="Redeliver").click()
    page.get_by_text("queued again as delivery").wait_for()
    again = WebhookDelivery.objects.exclude(pk=delivery.pk).get()
    assert again.event_id == "evt_e2e" and again.redelivery_of_id == delivery.pk
    assert page.locator(f"#delivery-{again.pk}").is_visible()
