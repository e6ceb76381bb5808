"""Users of each role, tokens of each scope, and a client that sends a token."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from dashboard import tokens
from dashboard.models import ApiToken
from tests.dashboard.conftest import make_user

SCOPES = ("viewer", "operator", "maintainer")


def token_for(user, scope: str, name: str = "tests") -> str:
    return tokens.create_token(user, scope, name)[1]


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def api_users(db) -> dict:
    """One user per role (roles are groups, made again after a transactional test's flush)."""
    return {role: make_user(f"api-{role}", role) for role in SCOPES}


@pytest.fixture
def token_secrets(api_users) -> dict[str, str]:
    """Secrets of tokens named after their cases: ``none`` (no header), ``expired``, ``revoked``,
    and one per scope, all of the maintainer (so the scope, not the role, is what limits them)."""
    maintainer = api_users["maintainer"]
    secrets = {scope: token_for(maintainer, scope, scope) for scope in SCOPES}
    expired, secrets["expired"] = tokens.create_token(maintainer, "maintainer", "expired", expires_days=1)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    revoked, secrets["revoked"] = tokens.create_token(maintainer, "maintainer", "revoked")
    tokens.revoke_token(revoked, actor=maintainer)
    secrets["none"] = ""
    return secrets


class TokenClient(Client):
    """Django's test client, sending ``Authorization: Bearer`` with every request (JSON bodies)."""

    def __init__(self, secret: str = "", **defaults):
        if secret:
            defaults.update(bearer(secret))
        super().__init__(**defaults)

    def post_json(self, path: str, body: object = None, **extra):
        data = "" if body is None else body
        return self.post(path, data=data, content_type="application/json", **extra)
