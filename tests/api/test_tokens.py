"""Personal access tokens: the page, ``manage.py createtoken``, hashing, scope limits, audit."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from dashboard.access import ensure_roles
from dashboard.models import ApiToken, AuditEvent, Checkpoint, Run
from tests.dashboard.conftest import add_checkpoint_rows

from .conftest import TokenClient, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(checkpoint_root) -> Run:
    (checkpoint_root / "tok").mkdir()
    run = Run.objects.create(name="tok", directory=str(checkpoint_root / "tok"))
    add_checkpoint_rows(run, 2)
    return run


def test_the_page_shows_a_new_token_once_and_stores_only_its_hash(api_users):
    client = Client()
    client.force_login(api_users["operator"])
    page = client.get("/tokens/").content.decode()
    assert 'value="operator"' in page and 'value="maintainer"' not in page  # never above the role
    assert 'href="/tokens/"' in page  # linked from the navigation
    response = client.post("/tokens/", {"name": "ci", "scope": "operator", "expires_days": "30"})
    assert response["Cache-Control"] == "no-store"
    secret = re.search(r'<code id="new-token">(ckd_[A-Za-z0-9_-]{40})</code>', response.content.decode()).group(1)
    token = ApiToken.objects.get()
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiToken.objects.values().get()) and token.lookup == secret[:12]
    assert secret not in client.get("/tokens/").content.decode()  # shown once
    assert TokenClient(secret).get("/api/v1/runs").status_code == 200
    # A scope above the role cannot be chosen (the form refuses it).
    refused = client.post("/tokens/", {"name": "too much", "scope": "maintainer"})
    assert ApiToken.objects.count() == 1 and "not one of the available choices" in refused.content.decode()


def test_revoking_on_the_page_stops_the_token_at_once(api_users):
    client = Client()
    client.force_login(api_users["viewer"])
    secret = token_for(api_users["viewer"], "viewer")
    token = ApiToken.objects.get()
    assert TokenClient(secret).get("/api/v1/runs").status_code == 200
    other = Client()
    other.force_login(api_users["operator"])
    assert other.post(f"/tokens/{token.pk}/revoke/").status_code == 404  # not theirs
    client.post(f"/tokens/{token.pk}/revoke/")
    assert TokenClient(secret).get("/api/v1/runs").status_code == 401
    assert "revoked" in client.get("/tokens/").content.decode()
    assert AuditEvent.objects.filter(action="token_revoked").count() == 1


def test_createtoken_prints_only_the_token(api_users):
    out, err = io.StringIO(), io.StringIO()
    call_command("createtoken", "api-operator", "--scope", "viewer", "--name", "deploy", "--expires-days", "7",
                 stdout=out, stderr=err)
    secret = out.getvalue().strip()
    assert re.fullmatch(r"ckd_[A-Za-z0-9_-]{40}", secret)
    token = ApiToken.objects.get()
    assert (token.name, token.scope, token.user.username) == ("deploy", "viewer", "api-operator")
    assert 6 <= (token.expires_at - token.created_at).days <= 7
    assert TokenClient(secret).get("/api/v1/runs").status_code == 200
    with pytest.raises(CommandError, match="exceed their role"):
        call_command("createtoken", "api-operator", "--scope", "maintainer", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No user"):
        call_command("createtoken", "nobody", "--scope", "viewer", stdout=io.StringIO())


def test_a_token_never_does_more_than_its_user_may_now(api_users, run):
    user = api_users["maintainer"]
    secret = token_for(user, "maintainer")
    checkpoint = run.checkpoints.first()
    user.groups.set([ensure_roles()["viewer"]])  # demoted after creating the token
    response = TokenClient(secret).post_json(f"/api/v1/checkpoints/{checkpoint.pk}/pin")
    assert response.status_code == 403
    assert not Checkpoint.objects.get(pk=checkpoint.pk).pinned
    user.is_active = False
    user.save()
    assert TokenClient(secret).get("/api/v1/runs").status_code == 401


def test_a_superusers_viewer_token_is_a_viewer(run, django_user_model):
    admin = django_user_model.objects.create_superuser("root-user", password="x" * 12)
    secret = token_for(admin, "viewer")
    checkpoint = run.checkpoints.first()
    assert TokenClient(secret).post_json(f"/api/v1/checkpoints/{checkpoint.pk}/pin").status_code == 403
    assert TokenClient(secret).post_json("/api/v1/runs/tok/scan").status_code == 403


def test_every_use_of_a_maintainer_token_is_audited_and_last_use_noted(api_users, run):
    secrets = [token_for(api_users["maintainer"], "maintainer", "ops"),
               token_for(api_users["maintainer"], "viewer", "reader")]
    maintainer, viewer = TokenClient(secrets[0]), TokenClient(secrets[1])
    maintainer.get("/api/v1/runs")
    maintainer.get("/api/v1/runs/tok")
    viewer.get("/api/v1/runs")
    used = AuditEvent.objects.filter(action="token_used").order_by("pk")
    assert [e.summary.split(": ", 1)[1] for e in used] == ["GET /api/v1/runs", "GET /api/v1/runs/tok"]
    assert all(e.actor == api_users["maintainer"] for e in used)
    assert ApiToken.objects.filter(last_used_at__isnull=False).count() == 2
    recorded = "".join(str(e.details) + e.summary for e in AuditEvent.objects.all())
    assert not any(secret in recorded for secret in secrets)


def test_garbage_in_the_authorization_header_is_401(run):
    for header in ("Bearer", "Bearer ", "Bearer ckd_wrong", "Bearer not-ours", "Basic dXNlcjpwYXNz"):
        response = Client(HTTP_AUTHORIZATION=header).get("/api/v1/runs")
        assert response.status_code == 401, header
        assert response["Content-Type"] == "application/problem+json"
