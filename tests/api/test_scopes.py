"""Every endpoint x {no token, expired, revoked, viewer, operator, maintainer}: 401 for the first
three, 403 below the endpoint's scope, and anything but 401/403 at or above it.

Real HTTP requests against a live server (the real database and Redis), one test per case that
walks every endpoint. The matrix is checked against the OpenAPI document, so an endpoint added without a
row here fails ``test_the_matrix_covers_every_endpoint``.
"""

from __future__ import annotations

import datetime as dt

import pytest

from dashboard.api.root import api
from dashboard.models import Alias, Checkpoint, Export, Job, Run, WebhookDelivery, WebhookEndpoint
from tests.dashboard.conftest import add_checkpoint_rows

pytestmark = pytest.mark.django_db

RANK = {"viewer": 0, "operator": 1, "maintainer": 2}

# (method, OpenAPI path, the scope it needs, the path with ids filled in, body)
MATRIX = [
    ("get", "/api/v1/runs", "viewer", "/api/v1/runs", None),
    ("post", "/api/v1/runs", "operator", "/api/v1/runs", {"directory": "{root}/new-run", "name": "new-run"}),
    ("get", "/api/v1/runs/{name}", "viewer", "/api/v1/runs/matrix", None),
    ("post", "/api/v1/runs/{name}/scan", "operator", "/api/v1/runs/matrix/scan", None),
    ("get", "/api/v1/runs/{name}/checkpoints", "viewer", "/api/v1/runs/matrix/checkpoints", None),
    ("get", "/api/v1/checkpoints/{id}", "viewer", "/api/v1/checkpoints/{checkpoint}", None),
    ("post", "/api/v1/checkpoints/{id}/freeze", "operator", "/api/v1/checkpoints/{checkpoint}/freeze",
     {"outputs": ["probs"]}),
    ("post", "/api/v1/checkpoints/{id}/verify", "operator", "/api/v1/checkpoints/{checkpoint}/verify", None),
    ("post", "/api/v1/checkpoints/{id}/pin", "maintainer", "/api/v1/checkpoints/{checkpoint}/pin", {"reason": "x"}),
    ("post", "/api/v1/checkpoints/{id}/unpin", "maintainer", "/api/v1/checkpoints/{checkpoint}/unpin", None),
    ("get", "/api/v1/jobs/{id}", "viewer", "/api/v1/jobs/{job}", None),
    # A prune job: canceling one needs what starting one needs.
    ("post", "/api/v1/jobs/{id}/cancel", "maintainer", "/api/v1/jobs/{job}/cancel", None),
    ("get", "/api/v1/exports", "viewer", "/api/v1/exports", None),
    ("get", "/api/v1/exports/{id}", "viewer", "/api/v1/exports/{export}", None),
    ("get", "/api/v1/exports/{id}/download", "viewer", "/api/v1/exports/{export}/download", None),
    ("post", "/api/v1/runs/{name}/prune-preview", "viewer", "/api/v1/runs/matrix/prune-preview", None),
    ("post", "/api/v1/runs/{name}/prune", "maintainer", "/api/v1/runs/matrix/prune", {"fingerprint": "stale"}),
    ("get", "/api/v1/runs/{name}/aliases", "viewer", "/api/v1/runs/matrix/aliases", None),
    ("get", "/api/v1/runs/{name}/aliases/{alias}", "viewer", "/api/v1/runs/matrix/aliases/prod", None),
    ("put", "/api/v1/runs/{name}/aliases/{alias}", "maintainer", "/api/v1/runs/matrix/aliases/prod", {"step": 2}),
    ("delete", "/api/v1/runs/{name}/aliases/{alias}", "maintainer", "/api/v1/runs/matrix/aliases/canary", None),
    # Webhook endpoints hold a secret and send events off the machine: maintainers only, reads too.
    ("get", "/api/v1/webhooks", "maintainer", "/api/v1/webhooks", None),
    ("post", "/api/v1/webhooks", "maintainer", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/", "events": ["job.failed"]}),
    ("get", "/api/v1/webhooks/{id}", "maintainer", "/api/v1/webhooks/{webhook}", None),
    ("delete", "/api/v1/webhooks/{id}", "maintainer", "/api/v1/webhooks/{webhook}", None),
    ("get", "/api/v1/webhooks/{id}/deliveries", "maintainer", "/api/v1/webhooks/{webhook}/deliveries", None),
    ("post", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", "maintainer",
     "/api/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver", None),
]
CASES = ("none", "expired", "revoked", "viewer", "operator", "maintainer")


@pytest.fixture
def objects(checkpoint_root) -> dict:
    (checkpoint_root / "matrix").mkdir()
    (checkpoint_root / "new-run").mkdir()
    run = Run.objects.create(name="matrix", directory=str(checkpoint_root / "matrix"))
    add_checkpoint_rows(run, 3)
    checkpoint = run.checkpoints.order_by("step").first()
    export = Export.objects.create(
        checkpoint=checkpoint, path=str(checkpoint_root.parent / "exports" / "matrix.pb"), size_bytes=1,
        sha256="0" * 64, outputs=["probs"],
    )
    job = Job.objects.create(kind=Job.PRUNE, run=run, status=Job.RUNNING, started_at=dt.datetime.now(dt.UTC))
    Alias.objects.create(run=run, name="prod", checkpoint=checkpoint)
    Alias.objects.create(run=run, name="canary", checkpoint=checkpoint)
    webhook = WebhookEndpoint.objects.create(url="https://hooks.example.com/in", secret="s" * 32, events=["job.failed"])
    delivery = WebhookDelivery.objects.create(endpoint=webhook, event="job.failed", event_id="evt-matrix", payload={},
                                              state="failed")
    return {"root": str(checkpoint_root), "checkpoint": checkpoint.pk, "export": export.pk, "job": job.pk,
            "webhook": webhook.pk, "delivery": delivery.pk}


def _fill(value, objects: dict):
    if isinstance(value, str):
        return value.format(**objects)
    if isinstance(value, dict):
        return {k: _fill(v, objects) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, objects) for v in value]
    return value


def test_the_matrix_covers_every_endpoint():
    schema = api.get_openapi_schema(path_prefix="/api/v1/")
    documented = {(method, path) for path, operations in schema["paths"].items() for method in operations}
    assert documented == {(method, path) for method, path, *_ in MATRIX}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", CASES)
def test_scope_matrix_over_http(case, token_secrets, objects, live_server):
    """Every endpoint, by a real HTTP client against a live server, with this case's token."""
    import requests

    headers = {"Authorization": f"Bearer {token_secrets[case]}"} if token_secrets[case] else {}
    wrong = []
    for method, _, needs, path, body in MATRIX:
        url = live_server.url + _fill(path, objects)
        data = _fill(body, objects)
        response = requests.request(method.upper(), url, headers=headers, timeout=30, allow_redirects=False,
                                    **({} if method in ("get", "delete") else {"json": data}))
        if case in ("none", "expired", "revoked"):
            expected = 401
        elif RANK[case] < RANK[needs]:
            expected = 403
        else:
            expected = None
        if expected is None:
            if response.status_code in (401, 403):
                wrong.append((method, path, "allowed", response.status_code, response.text[:200]))
            continue
        if response.status_code != expected:
            wrong.append((method, path, expected, response.status_code, response.text[:200]))
            continue
        problem = response.json()
        assert response.headers["Content-Type"] == "application/problem+json"
        assert problem["status"] == expected and problem["title"] and problem["detail"]
        if expected == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if case != "none":
                assert case in problem["detail"], problem["detail"]  # "expired on …", "was revoked"
        else:
            assert f"scope is {case}" in problem["detail"]
    assert wrong == [], f"{case}: (method, path, expected, got, body) {wrong}"
    if case in ("none", "expired", "revoked", "viewer"):
        # Nothing happened for the refused requests.
        assert not Checkpoint.objects.filter(pinned=True).exists()
        assert sorted(Alias.objects.values_list("name", "checkpoint__step")) == [("canary", 1), ("prod", 1)]
        assert WebhookEndpoint.objects.count() == 1 and WebhookDelivery.objects.count() == 1
        assert Job.objects.exclude(pk=objects["job"]).count() == 0
        assert Job.objects.get(pk=objects["job"]).status == Job.RUNNING
