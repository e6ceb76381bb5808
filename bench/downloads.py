"""Download benchmarks: ``download_vs_nginx``, ``download_accel_vs_nginx``, ``download_rss_growth_mb``.

A 1 GiB export (random bytes: a download does not parse the graph), in the page cache, fetched by
the same ``curl -o /dev/null`` three ways, each going first in turn, ``REPEAT`` times each, medians compared:

- **nginx static** (the baseline): nginx serving the file from a plain ``location`` (sendfile on),
  the fastest a web server on this machine sends a file;
- **gunicorn**: the dashboard as the README deploys it (``gunicorn.conf.py``: threaded workers,
  ``DEBUG=0``), logged in with a session cookie, Django streaming the file (``FileResponse`` →
  gunicorn's sendfile);
- **nginx + X-Accel-Redirect**: ``deploy/nginx.conf`` in front of a second gunicorn started with
  ``DOWNLOAD_X_ACCEL_REDIRECT``: the dashboard checks login, permission and the file, nginx sends it.

``download_rss_growth_mb``: resident memory of the gunicorn serving the download (master +
workers, sampled every 20 ms) over its value just before. Not measured: a slow client, TLS.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

from bench.harness import entry

BASE_DIR = Path(__file__).resolve().parent.parent
DOWNLOAD_BYTES = 2**30
# A 1 GiB download over loopback takes under half a second: single ones spread by a third, so many.
REPEAT = 15
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    chunk = os.urandom(16 * 2**20)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for offset in range(0, size, len(chunk)):
            # Vary the chunk a little so the file is not one repeated block (no dedup anywhere).
            part = offset.to_bytes(8, "little") + chunk[8:min(len(chunk), size - offset)]
            digest.update(part)
            handle.write(part)
    return digest.hexdigest()


def make_large_export(run_name: str, size: int = DOWNLOAD_BYTES):
    """A run with one checkpoint and a verified export of ``size`` random bytes (no real graph:
    a download does not parse it)."""
    from django.conf import settings
    from django.utils import timezone

    from dashboard.models import Checkpoint, Export, Run

    run_dir = Path(settings.CHECKPOINT_ROOTS[0]) / run_name
    run_dir.mkdir()
    run = Run.objects.create(name=run_name, directory=str(run_dir))
    checkpoint = Checkpoint.objects.create(run=run, prefix="model.ckpt-1000", step=1000, saved_at=timezone.now())
    path = Path(settings.EXPORT_ROOT) / run_name / "1000" / "big.pb"
    sha = _write_random_file(path, size)
    return Export.objects.create(checkpoint=checkpoint, path=str(path), size_bytes=size, sha256=sha,
                                 outputs=["probs"], verified=True, file_mtime_ns=os.stat(path).st_mtime_ns)


def _server_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except FileNotFoundError:
        children = []
    return [master, *map(int, children)]


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def _session_cookie() -> str:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    user = User.objects.create_superuser(f"bench-{uuid.uuid4().hex[:6]}", password=secrets.token_hex(16))
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}:\n{log.read_text()[-3000:]}")


def _nginx_conf(work: Path, static_port: int, static_dir: Path, proxy_port: int, upstream_port: int,
                exports: Path) -> Path:
    """nginx.conf: a static server for the baseline, and deploy/nginx.conf as shipped (ports and the
    export alias adapted) in front of the X-Accel gunicorn."""
    server = (BASE_DIR / "deploy" / "nginx.conf").read_text()
    for documented, here in [("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
                             ("listen 80;", f"listen 127.0.0.1:{proxy_port};"),
                             ("alias /data/exports/;", f"alias {exports}/;")]:
        if documented not in server:
            raise RuntimeError(f"deploy/nginx.conf no longer contains {documented!r}")
        server = server.replace(documented, here)
    temp = "".join(f"  {kind}_temp_path {work}/nginx-{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\nuser root;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  sendfile on;\n{temp}"
        f"  server {{\n    listen 127.0.0.1:{static_port};\n    location /static-file/ {{ alias {static_dir}/; }}\n  }}\n"
        f"{server}\n}}\n"
    )
    return conf


class _Servers:
    def __init__(self, work: Path) -> None:
        self.work, self.processes, self.logs = work, {}, []

    def start(self, name: str, command: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
        log_path = self.work / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes[name] = process
        _wait_for_port(port, process, log_path)
        return process

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


def downloads_vs_nginx(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    from django.conf import settings

    from bench.exports import _child_env

    if not os.path.exists(NGINX):
        raise RuntimeError("nginx is needed for the download benchmarks: apt-get install nginx")
    export = make_large_export("download")
    path = Path(export.path)
    cookie = _session_cookie()
    web_port, accel_port, static_port, proxy_port = (_free_port() for _ in range(4))
    # The session cookie was signed here, so the servers need this process's key.
    env = _child_env(DEBUG="0", SECRET_KEY=settings.SECRET_KEY, ALLOWED_HOSTS="127.0.0.1,localhost",
                     SECURE_COOKIES="0", STATIC_ROOT=str(work / "static"))
    gunicorn = [str(BASE_DIR / ".venv" / "bin" / "gunicorn"), "dashboard.wsgi", "--config",
                str(BASE_DIR / "gunicorn.conf.py")]
    servers = _Servers(work)
    download_path = f"/exports/{export.pk}/download/"

    def curl(url: str, *extra: str) -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run(["curl", "--silent", "--show-error", "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download}", *extra, url],
                              capture_output=True, text=True, timeout=600)
        return time.perf_counter() - started, done.stdout

    try:
        web = servers.start("gunicorn", [*gunicorn, "--bind", f"127.0.0.1:{web_port}"], env, web_port)
        servers.start("gunicorn-accel", [*gunicorn, "--bind", f"127.0.0.1:{accel_port}"],
                      {**env, "DOWNLOAD_X_ACCEL_REDIRECT": "/protected-exports/"}, accel_port)
        conf = _nginx_conf(work, static_port, path.parent, proxy_port, accel_port, Path(settings.EXPORT_ROOT))
        servers.start("nginx", [NGINX, "-p", str(work), "-c", str(conf)], env, proxy_port)
        urls = {
            "nginx": (f"http://127.0.0.1:{static_port}/static-file/big.pb", ()),
            "gunicorn": (f"http://127.0.0.1:{web_port}{download_path}", ("--cookie", cookie)),
            "accel": (f"http://127.0.0.1:{proxy_port}{download_path}", ("--cookie", cookie)),
        }
        # Warm the servers (imports, first queries) and the page cache, like servers in service.
        for name, (url, extra) in urls.items():
            for _ in range(3):
                _, status = curl(url, "--range", "0-0", *extra)
                if not status.startswith("206"):
                    raise RuntimeError(f"{name} warm-up answered {status!r}")
        curl(urls["nginx"][0])
        pids = _server_pids(web.pid)
        before = _rss_mb(pids)
        peak = [before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], _rss_mb(pids))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        times: dict[str, list[float]] = {name: [] for name in urls}
        ways = list(urls.items())
        for i in range(repeat):
            # Each way goes first in turn: none always follows another's page-cache and socket churn.
            for name, (url, extra) in ways[i % len(ways):] + ways[:i % len(ways)]:
                seconds, status = curl(url, *extra)
                if status != f"200 {DOWNLOAD_BYTES}":
                    raise RuntimeError(f"{name} download answered {status!r}")
                times[name].append(seconds)
        sampling.set()
        sampler.join()
    finally:
        servers.stop()
        path.unlink(missing_ok=True)
    mb = DOWNLOAD_BYTES / 1e6
    rate = {name: mb / statistics.median(values) for name, values in times.items()}
    spread = {name: [round(mb / v) for v in values] for name, values in times.items()}
    return {
        "download_vs_nginx": entry(rate["gunicorn"], rate["nginx"], "MB/s", "ratio >= 0.8", bytes=DOWNLOAD_BYTES,
                                   repeats=repeat, server="gunicorn.conf.py (gthread), DEBUG=0",
                                   rates_mb_s=spread),
        "download_accel_vs_nginx": entry(rate["accel"], rate["nginx"], "MB/s", "ratio >= 0.95",
                                         bytes=DOWNLOAD_BYTES, repeats=repeat,
                                         server="deploy/nginx.conf + gunicorn with DOWNLOAD_X_ACCEL_REDIRECT"),
        "download_rss_growth_mb": entry(peak[0] - before, None, "MB", "value <= 50", rss_before_mb=before,
                                        rss_peak_mb=peak[0]),
    }
