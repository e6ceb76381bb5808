"""REST API benchmarks: ``api_list_10k_ms`` and ``api_download_vs_page``.

``api_list_10k_ms``: every checkpoint of a 10,000-checkpoint run listed through
``GET /api/v1/runs/{name}/checkpoints`` in pages of 500 (20 requests, each following the previous
page's cursor), with a Bearer token, against a bare Django view that a careful engineer would
write for the same job: the same keyset query on ``(step, id)`` (``values_list`` of exactly the
listed columns), the same fields made into dicts, ``json.dumps``, an ``HttpResponse``, behind a
logged-in session. Both go through Django's whole request handling in this process (the test
client; all middleware), ``DEBUG=0``, throttling on (counted in Redis, never refusing), best of
``REPEAT`` interleaved rounds. Measures what django-ninja, token checks, keyset cursors, the
shared representations and response validation add per page. Not: network time, or several
clients at once.

``api_download_vs_page``: a 1 GiB export downloaded by ``curl`` from gunicorn (``DEBUG=0``)
through ``/api/v1/exports/{id}/download`` with a token, against the page's download button's URL
with a session cookie, ``DOWNLOAD_REPEAT`` interleaved pairs, medians. Both are ``dashboard.downloads.export_response``; the
figure guards that the API's auth, throttle and error handling stay out of the byte path. Not: the
ceiling of a download on this machine (``download_vs_cat`` is that comparison).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from bench.harness import entry

BASE_DIR = Path(__file__).resolve().parent.parent
N_CHECKPOINTS = 10_000
PAGE = 500
REPEAT = 7
DOWNLOAD_BYTES = 2**30  # the size download_vs_cat serves: a large model
# Many pairs make the medians steady on a busy machine.
DOWNLOAD_REPEAT = 15


def _bare_checkpoints(request, name: str):
    """The baseline: one page of a run's checkpoints by (-step, id), as a careful engineer writes it."""
    from django.db.models import F, Q
    from django.http import HttpResponse

    from dashboard import access

    run = access.get_run_for_user(request, name)
    limit = min(int(request.GET.get("limit", 100)), 500)
    rows = run.checkpoints.order_by(F("step").desc(nulls_last=True), "id")
    after = request.GET.get("after")
    if after:
        step, pk = (int(v) for v in after.split(","))
        rows = rows.filter(Q(step__lt=step) | Q(step=step, id__gt=pk) | Q(step__isnull=True))
    page = list(rows.values_list("id", "prefix", "step", "status", "latest_in", "pinned", "size_bytes", "saved_at",
                                 "metrics")[: limit + 1])
    items = [
        {"id": pk, "prefix": prefix, "step": step, "status": status, "is_latest": bool(latest), "pinned": pinned,
         "size_bytes": size, "saved_at": saved.isoformat() if saved else None, "metrics": metrics or {}}
        for pk, prefix, step, status, latest, pinned, size, saved, metrics in page[:limit]
    ]
    following = f"{page[limit - 1][2]},{page[limit - 1][0]}" if len(page) > limit else None
    return HttpResponse(json.dumps({"items": items, "next": following}), content_type="application/json")


def _urlpatterns() -> list:
    from django.urls import path

    from dashboard.urls import urlpatterns

    return [path("bench/bare/<slug:name>/checkpoints", _bare_checkpoints), *urlpatterns]


urlpatterns: list = []  # filled by ``list_10k`` (ROOT_URLCONF points here while it runs)


def list_10k(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    import datetime as dt

    from django.contrib.auth.models import User
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from django.test import Client, override_settings

    from dashboard import tokens
    from dashboard.access import ensure_roles
    from dashboard.localredis import PrivateRedis
    from dashboard.models import Checkpoint, Run

    urlpatterns[:] = _urlpatterns()
    directory = work / "checkpoints" / "api-list"
    directory.mkdir(parents=True, exist_ok=True)
    run = Run.objects.create(name="api-list", directory=str(directory))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    Checkpoint.objects.bulk_create(
        (Checkpoint(run=run, prefix=f"model.ckpt-{s}", step=s, saved_at=base + dt.timedelta(seconds=s),
                    size_bytes=4096 + s, metrics={"loss": 1 / s, "accuracy": 1 - 1 / s},
                    latest_in=["checkpoint"] if s == N_CHECKPOINTS else [])
         for s in range(1, N_CHECKPOINTS + 1)),
        batch_size=5000,
    )
    user = User.objects.create_user(f"bench-{uuid.uuid4().hex[:6]}", password=uuid.uuid4().hex)
    user.groups.add(ensure_roles()["viewer"])
    _, secret = tokens.create_token(user, "viewer", "bench")
    private = None
    from django.conf import settings

    if not os.environ.get("REDIS_URL"):
        private = PrivateRedis(settings.VAR_DIR / "redis.sock").start()
    # Like a server in service: connections stay open between requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    ours = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", SERVER_NAME="localhost")
    bare = Client(SERVER_NAME="localhost")
    bare.force_login(user)

    def api_walk() -> int:
        count, cursor = 0, None
        while True:
            query = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            page = json.loads(ours.get("/api/v1/runs/api-list/checkpoints", query).content)
            count += len(page["items"])
            cursor = page["next"]
            if cursor is None:
                return count

    def bare_walk() -> int:
        count, after = 0, None
        while True:
            query = {"limit": PAGE, **({"after": after} if after else {})}
            page = json.loads(bare.get("/bench/bare/api-list/checkpoints", query).content)
            count += len(page["items"])
            after = page["next"]
            if after is None:
                return count

    ours_times, bare_times = [], []
    try:
        with override_settings(ROOT_URLCONF="bench.api", DEBUG=False, ALLOWED_HOSTS=["localhost"],
                               API_THROTTLE_RATE="1000000/min"):
            assert api_walk() == bare_walk() == N_CHECKPOINTS  # and warm: imports, caches, first queries
            for _ in range(repeat):
                started = time.perf_counter()
                api_walk()
                ours_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                bare_walk()
                bare_times.append(time.perf_counter() - started)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        if private is not None:
            private.stop()
    ours_ms, bare_ms = min(ours_times) * 1000, min(bare_times) * 1000
    return {
        "api_list_10k_ms": entry(ours_ms, bare_ms, "ms", "ratio <= 2", checkpoints=N_CHECKPOINTS, page=PAGE,
                                 repeats=repeat, spread=[round(t * 1000, 1) for t in ours_times],
                                 baseline_spread=[round(t * 1000, 1) for t in bare_times]),
    }


def download_vs_page(work: Path, repeat: int = DOWNLOAD_REPEAT) -> dict[str, dict]:
    import socket

    from django.conf import settings
    from django.contrib.auth.models import User

    from bench.downloads import _session_cookie, _wait_for_port, make_large_export
    from bench.exports import _child_env
    from dashboard import tokens
    from dashboard.localredis import PrivateRedis

    export = make_large_export("api-download", DOWNLOAD_BYTES)
    path = Path(export.path)
    cookie = _session_cookie()
    user = User.objects.filter(is_superuser=True).order_by("-pk").first()
    _, secret = tokens.create_token(user, "viewer", "bench download")
    private = None
    if not os.environ.get("REDIS_URL"):
        private = PrivateRedis(settings.VAR_DIR / "redis.sock").start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = work / "gunicorn-api.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the server below
    env = _child_env(DEBUG="0", SECRET_KEY=settings.SECRET_KEY, ALLOWED_HOSTS="127.0.0.1", SECURE_COOKIES="0",
                     STATIC_ROOT=str(work / "static"))
    server = subprocess.Popen(
        [str(BASE_DIR / ".venv" / "bin" / "gunicorn"), "dashboard.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--timeout", "300"],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def curl(url: str, *auth: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(["curl", "--silent", "--show-error", "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download}", *auth, url], capture_output=True, text=True,
                              timeout=600)
        if done.stdout != f"200 {DOWNLOAD_BYTES}":
            raise RuntimeError(f"{url} answered {done.stdout!r}:\n{log_path.read_text()[-3000:]}")
        return time.perf_counter() - started

    api_url, page_url = f"{base}/api/v1/exports/{export.pk}/download", f"{base}/exports/{export.pk}/download/"
    api_auth, page_auth = ("-H", f"Authorization: Bearer {secret}"), ("--cookie", cookie)
    try:
        _wait_for_port(port, server, log_path)
        for _ in range(4):  # warm both workers, the page cache and both paths
            curl(api_url, *api_auth)
            curl(page_url, *page_auth)
        api_times, page_times = [], []
        for i in range(repeat):
            # Which side goes first alternates: measured, the second of a pair ran up to 20 % faster
            # or slower depending on which came before it, whatever the side.
            if i % 2:
                api_times.append(curl(api_url, *api_auth))
                page_times.append(curl(page_url, *page_auth))
            else:
                page_times.append(curl(page_url, *page_auth))
                api_times.append(curl(api_url, *api_auth))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        path.unlink(missing_ok=True)
        if private is not None:
            private.stop()
    mb = DOWNLOAD_BYTES / 1e6
    api_rate, page_rate = mb / statistics.median(api_times), mb / statistics.median(page_times)
    return {
        "api_download_vs_page": entry(api_rate, page_rate, "MB/s", "ratio >= 0.95", bytes=DOWNLOAD_BYTES,
                                      repeats=repeat, server="gunicorn 2 sync workers, DEBUG=0",
                                      best_mb_s=[mb / min(api_times), mb / min(page_times)]),
    }


def run(work: Path) -> dict[str, dict]:
    return {**list_10k(work), **download_vs_page(work)}
