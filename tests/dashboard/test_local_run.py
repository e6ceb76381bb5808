"""``make run``'s launcher on a machine of its own: one block saying where to go and how to log in,
a console that stays quiet while nothing happens (periodic jobs run, but log at DEBUG), and the
site's own error pages, static files and favicon with DEBUG off by default."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.live import BASE_DIR, free_port, subprocess_env, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]

IDLE_SECONDS = 45
MAX_LINES_PER_MINUTE = 20


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode(errors="replace")


@pytest.fixture
def local_stack(checkpoint_root):
    """``manage.py bootstrap`` then ``manage.py runlocal`` as ``make run`` calls them, default log level."""
    var_dir = Path(tempfile.mkdtemp(prefix="local-"))  # short: it holds the Redis socket
    port = free_port()
    env = subprocess_env(VAR_DIR=str(var_dir), SCAN_INTERVAL_SECONDS="20")
    for name in ("REDIS_URL", "DEBUG", "LOG_LEVEL", "SECRET_KEY", "ALLOWED_HOSTS", "SECURE_COOKIES"):
        env.pop(name, None)
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "bootstrap", "--no-demo"], env=env, cwd=BASE_DIR, check=True, capture_output=True)
    log_path = var_dir / "console.log"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [*manage, "runlocal", "--workers", "1", "--addr", f"127.0.0.1:{port}"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield launcher, log_path, var_dir, f"http://127.0.0.1:{port}"
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()


def test_local_run_prints_one_ready_block_and_stays_quiet_while_idle(local_stack):
    launcher, log_path, var_dir, url = local_stack
    try:
        wait_for(lambda: "is running" in log_path.read_text(errors="replace"), 120, what="the ready block")
    except TimeoutError:
        pytest.fail(log_path.read_text(errors="replace"))
    # The worker imports TensorFlow after the web server answers: let it finish starting.
    time.sleep(10)
    text = log_path.read_text(errors="replace")
    assert f"open      {url}/" in text
    assert "user      admin" in text
    assert f"password  in {var_dir / 'initial-admin-password.txt'}" in text
    before = len(text.splitlines())

    time.sleep(IDLE_SECONDS)
    idle_lines = log_path.read_text(errors="replace").splitlines()[before:]
    per_minute = len(idle_lines) * 60 / IDLE_SECONDS
    assert per_minute < MAX_LINES_PER_MINUTE, "\n".join(idle_lines)
    assert not [line for line in idle_lines if "Job OK" in line or "reconcile_jobs" in line], "\n".join(idle_lines)
    assert launcher.poll() is None

    # Quiet because periodic jobs log at DEBUG, not because none ran: the reconciler (every 15 s)
    # and the rescans finished in the private Redis meanwhile.
    from django.conf import settings

    connection = redis.Redis(unix_socket_path=str(var_dir / "redis.sock"))
    finished = connection.zcard(f"rq:finished:{settings.JOB_QUEUE}")
    assert finished >= 3


def test_local_run_serves_the_sites_error_pages_static_files_and_favicon(local_stack):
    _, log_path, _, url = local_stack
    wait_for(lambda: "is running" in log_path.read_text(errors="replace"), 120, what="the ready block")
    assert "DEBUG off" in log_path.read_text(errors="replace")

    status, _, body = _get(url + "/accounts/login/?next=/")
    assert status == 200
    css = next(part.split('"')[0] for part in body.split('href="')[1:] if part.startswith("/static/dashboard/site"))
    assert ".css" in css and css != "/static/dashboard/site.css"  # hashed by the manifest storage
    status, content_type, _ = _get(url + css)
    assert (status, content_type.split(";")[0]) == (200, "text/css")

    status, _, body = _get(url + "/accounts/no-such-page/")
    assert status == 404
    assert "Back to runs" in body and "URLconf" not in body and "Technical" not in body

    status, content_type, body = _get(url + "/favicon.ico")
    assert status == 200 and content_type.startswith("image/svg+xml") and "<svg" in body
