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


# --- login throttling (django-axes) through the real login view ------------------------------


def _login(client, username: str, password: str):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR="203.0.113.7")


def test_login_locks_a_user_out_of_one_address_after_repeated_failures(client, settings):
    User.objects.create_user("lena", password="right-horse-battery-staple")
    User.objects.create_user("other", password="right-horse-battery-staple")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = _login(client, "lena", "wrong")
        assert response.status_code == 200 and "Please enter a correct username and password" in response.content.decode()
    locked = _login(client, "lena", "wrong")
    assert locked.status_code == 429
    assert "Too many failed log-ins" in locked.content.decode()
    # Locked means locked: the right password is refused too, and no session is made.
    again = _login(client, "lena", "right-horse-battery-staple")
    assert again.status_code == 429 and "_auth_user_id" not in client.session
    # Another user name from the same address is not locked (no one can lock out a whole office).
    other = _login(client, "other", "right-horse-battery-staple")
    assert other.status_code == 302 and client.session["_auth_user_id"] == str(User.objects.get(username="other").pk)


def test_a_successful_login_resets_the_failure_count(client, settings):
    User.objects.create_user("lena", password="right-horse-battery-staple")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "lena", "wrong")
    assert _login(client, "lena", "right-horse-battery-staple").status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "lena", "wrong").status_code == 200
    assert _login(client, "lena", "right-horse-battery-staple").status_code == 302


def test_check_deploy_is_clean_with_throttling_and_csp_on():
    from django.conf import settings

    assert "axes" in settings.INSTALLED_APPS and settings.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware"
    assert "csp.middleware.CSPMiddleware" in settings.MIDDLEWARE
    result = _check_deploy(
        DEBUG="0", SECRET_KEY="a-long-random-production-key-" + "x" * 40, ALLOWED_HOSTS="checkpoints.example.com",
        SECURE_HSTS_SECONDS="31536000", SECURE_SSL_REDIRECT="1",
    )
    assert result.returncode == 0 and "no issues" in result.stdout, result.stdout + result.stderr
