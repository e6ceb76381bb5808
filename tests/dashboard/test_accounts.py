"""Creating users with roles, and the production configuration passing Django's deploy checks."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from tests.live import BASE_DIR

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role,can_operate,can_maintain", [
    ("viewer", False, False), ("operator", True, False), ("maintainer", True, True),
])
def test_createuser_gives_the_role_its_permissions(role, can_operate, can_maintain):
    out = io.StringIO()
    call_command("createuser", f"user-{role}", "--role", role, stdout=out)
    user = User.objects.get(username=f"user-{role}")
    password = out.getvalue().split("Password (shown once): ")[1].strip()
    assert user.check_password(password)
    assert user.has_perm("dashboard.view_run")
    assert user.has_perm("dashboard.operate_run") is can_operate
    assert user.has_perm("dashboard.maintain_run") is can_maintain


def test_createuser_refuses_weak_passwords_and_duplicates(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("password\n"))
    with pytest.raises(CommandError, match="too common|too short"):
        call_command("createuser", "weak", "--role", "viewer", "--password-stdin", stdout=io.StringIO())
    call_command("createuser", "dup", "--role", "viewer", stdout=io.StringIO())
    with pytest.raises(CommandError, match="exists already"):
        call_command("createuser", "dup", "--role", "viewer", stdout=io.StringIO())


def _check_deploy(**env: str) -> subprocess.CompletedProcess:
    unset = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DJANGO_ALLOW_ASYNC_UNSAFE")
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR, env={**base, **env}, capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_is_clean_in_the_production_configuration():
    result = _check_deploy(
        DEBUG="0", SECRET_KEY="a-long-random-production-key-" + "x" * 40, ALLOWED_HOSTS="checkpoints.example.com",
        SECURE_HSTS_SECONDS="31536000", SECURE_SSL_REDIRECT="1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    result = _check_deploy(DEBUG="0", ALLOWED_HOSTS="checkpoints.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
