"""The API's aliases ("the prod SavedModel" without knowing its step) and webhook endpoints."""

from __future__ import annotations

import pytest

from dashboard import aliases
from dashboard.models import AuditEvent, Export, Job, Run, WebhookDelivery, WebhookEndpoint
from tests.dashboard import test_freeze_verify_commands as commands
from tests.dashboard.conftest import add_checkpoint_rows

from .conftest import TokenClient, token_for

demo_template, demo = commands.demo_template, commands.demo  # a scanned, really trained run

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(checkpoint_root) -> Run:
    (checkpoint_root / "served").mkdir()
    run = Run.objects.create(name="served", directory=str(checkpoint_root / "served"))
    add_checkpoint_rows(run, 3)
    return run


def test_an_alias_resolves_to_its_checkpoint_and_exports_and_moves_with_an_audit(api_users, run):
    viewer = TokenClient(token_for(api_users["viewer"], "viewer"))
    maintainer = TokenClient(token_for(api_users["maintainer"], "maintainer"))
    second, third = run.checkpoints.get(step=2), run.checkpoints.get(step=3)
    saved = Export.objects.create(checkpoint=third, kind=Export.SAVED_MODEL, path="/exports/served/3/probs.savedmodel",
                                  sha256="1" * 64, verified=True)
    aliases.set_alias(run, "prod", third)

    resolved = viewer.get("/api/v1/runs/served/aliases/prod").json()
    assert resolved["checkpoint"]["step"] == 3 and resolved["run"] == "served"
    assert [(e["id"], e["kind"]) for e in resolved["exports"]] == [(saved.pk, "saved_model")]

    moved = maintainer.put("/api/v1/runs/served/aliases/prod", data={"step": 2}, content_type="application/json")
    assert moved.status_code == 200 and moved.json()["checkpoint"]["id"] == second.pk
    event = AuditEvent.objects.filter(action="alias").latest("at")
    assert (event.details["from_step"], event.details["to_step"]) == (3, 2)
    assert viewer.get("/api/v1/runs/served/aliases").json()[0]["checkpoint"]["step"] == 2

    assert maintainer.delete("/api/v1/runs/served/aliases/prod").status_code == 204
    missing = viewer.get("/api/v1/runs/served/aliases/prod")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/problem+json"
    neither = maintainer.put("/api/v1/runs/served/aliases/prod", data={}, content_type="application/json")
    assert neither.status_code == 400 and neither.json()["errors"][0]["field"] == "step"


@pytest.mark.tf
def test_freeze_over_the_api_chooses_the_export_kind(api_users, demo):
    from dashboard.jobs import get_queue

    operator = TokenClient(token_for(api_users["operator"], "operator"))
    checkpoint = demo.checkpoints.get(step=50)
    response = operator.post_json(f"/api/v1/checkpoints/{checkpoint.pk}/freeze",
                                  {"outputs": ["probs"], "kind": "tflite", "quantize": True})
    get_queue().empty()  # no worker here: the job's parameters are what is checked
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert (job.params["kind"], job.params["quantize"], job.params["outputs"]) == ("tflite", True, ["probs"])
    bad = operator.post_json(f"/api/v1/checkpoints/{checkpoint.pk}/freeze", {"outputs": ["probs"], "kind": "zip"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "kind"


def test_webhook_endpoints_are_registered_listed_and_redelivered_by_maintainers(api_users, settings):
    maintainer = TokenClient(token_for(api_users["maintainer"], "maintainer"))
    refused = maintainer.post_json("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]})
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "url"
    assert not WebhookEndpoint.objects.exists()

    settings.WEBHOOK_ALLOW_PRIVATE = True
    created = maintainer.post_json("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]})
    assert created.status_code == 201
    body = created.json()
    endpoint = WebhookEndpoint.objects.get()
    assert body["secret"] == endpoint.secret and body["events"] == ["job.failed"]
    listed = maintainer.get("/api/v1/webhooks").json()
    assert [e["id"] for e in listed] == [endpoint.pk] and "secret" not in listed[0]

    failed = WebhookDelivery.objects.create(endpoint=endpoint, event="job.failed", event_id="evt-1",
                                            payload={"event": "job.failed"}, state=WebhookDelivery.FAILED)
    page = maintainer.get(f"/api/v1/webhooks/{endpoint.pk}/deliveries").json()
    assert [d["id"] for d in page["items"]] == [failed.pk] and page["next"] is None
    again = maintainer.post_json(f"/api/v1/webhooks/{endpoint.pk}/deliveries/{failed.pk}/redeliver")
    assert again.status_code == 202 and again.json()["redelivery_of"] == failed.pk
    assert maintainer.delete(f"/api/v1/webhooks/{endpoint.pk}").status_code == 204
    assert not WebhookEndpoint.objects.exists()
