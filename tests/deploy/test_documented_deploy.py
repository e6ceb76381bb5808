"""The README's production setup, deployed exactly as written and driven over HTTP.

The commands are read from the README's Production section (not copied here), so the README and
this test cannot drift apart: ``migrate``, ``collectstatic``, the gunicorn line, an ``rqworker``
and the ``rqcron`` scheduler, each a process of its own on loopback, with ``DEBUG=0``, a
``SECRET_KEY`` and ``ALLOWED_HOSTS``. Two deviations, both forced by the test machine: the
gunicorn ``--bind`` is a free loopback port, and ``SECURE_COOKIES=0`` because the test speaks
plain HTTP (in production TLS ends at a proxy in front and cookies stay ``Secure``).

The full deployment runs for the PostgreSQL configuration only (the README's production
database); the DEBUG=0 static-files check runs for every configuration.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.live import BASE_DIR, free_port, wait_for

README = BASE_DIR / "README.md"
SECRET = "deploy-test-" + "k" * 50


def readme_commands() -> dict[str, list[str]]:
    """The Production section's commands, by what they start, as argument lists."""
    text = README.read_text()
    section = text.split("## Production", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands: dict[str, list[str]] = {}
    for line in block.splitlines():
        if not line.startswith(".venv/bin/"):
            continue
        argv = shlex.split(line, comments=True)
        if argv[0].endswith("gunicorn"):
            commands["web"] = argv
        else:
            commands[argv[2]] = argv  # manage.py <command>
    assert set(commands) >= {"migrate", "collectstatic", "web", "rqworker", "rqcron"}, commands
    return commands


def _production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_QUEUE", "DJANGO_SETTINGS_MODULE", "STATIC_ROOT")}
    env.update(DEBUG="0", SECRET_KEY=SECRET, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _manage(argv: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        argv, cwd=BASE_DIR, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# --- DEBUG=0 static files: every configuration ----------------------------------------------------


def test_collectstatic_then_login_with_debug_off(tmp_path):
    """With DEBUG=0 whitenoise's manifest storage needs every file a static file names: a missing
    one aborted collectstatic, and then every page, login included, was a 500."""
    static_root = tmp_path / "static"
    env = _production_env(ALLOWED_HOSTS="testserver", STATIC_ROOT=str(static_root), VAR_DIR=str(tmp_path / "var"))
    collect = readme_commands()["collectstatic"]
    _manage(collect, env)
    assert (static_root / "staticfiles.json").exists()
    probe = (
        "import django; django.setup()\n"
        "import re\n"
        "from django.test import Client\n"
        "c = Client()\n"
        "r = c.get('/accounts/login/')\n"
        "print('login', r.status_code)\n"
        "print('csp', r.headers.get('Content-Security-Policy', ''))\n"
        "for url in re.findall(r'(?:href|src)=\"(/static/[^\"]+)\"', r.content.decode()):\n"
        "    s = c.get(url)\n"
        "    print('static', s.status_code, url)\n"
    )
    out = _manage([sys.executable, "-c", probe], {**env, "DJANGO_SETTINGS_MODULE": "dashboard.settings"})
    assert "login 200" in out, out
    assert "default-src 'self'" in out, out
    statics = [line.split() for line in out.splitlines() if line.startswith("static ")]
    assert len(statics) >= 3, out  # pico, site.css, htmx
    for _, status, url in statics:
        assert status == "200", out
        # Manifest names (content hashes), so that browsers may cache them for ever.
        assert re.search(r"\.[0-9a-f]{12}\.(css|js|svg)$", url), url


# --- The whole documented deployment: PostgreSQL ------------------------------------------------


class Deployment:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.env: dict[str, str] = {}

    def start(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as out:
            self.processes[name] = subprocess.Popen(
                argv, cwd=BASE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    process.wait(timeout=10)


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else None


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base_url = _postgres_url()
    if base_url is None:
        pytest.skip("the documented production deployment runs on PostgreSQL (DATABASE_URL unset or not postgres)")
    import dj_database_url
    import psycopg

    from dashboard.localredis import PrivateRedis
    from tests.checkpoint_factory import make_seed_run

    root = tmp_path_factory.mktemp("deploy")
    parts = dj_database_url.parse(base_url)
    dbname = f"deploy_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = dict(host=parts["HOST"] or "127.0.0.1", port=parts["PORT"] or 5432, user=parts["USER"] or "postgres",
                 password=parts["PASSWORD"] or None, dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    # Its own Redis: the README's worker listens on the queue "default", which a Redis shared
    # with other test sessions must not see.
    redis = PrivateRedis(root / "redis" / "redis.sock").start()
    d = Deployment(root)
    d.dbname = dbname
    d.checkpoints = root / "checkpoints"
    d.exports = root / "exports"
    d.env = _production_env(
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=base_url.rsplit("/", 1)[0] + "/" + dbname,
        REDIS_URL=redis.url,
        CHECKPOINT_ROOTS=str(d.checkpoints), EXPORT_ROOT=str(d.exports),
        STATIC_ROOT=str(root / "static"), VAR_DIR=str(root / "var"),
        SECURE_COOKIES="0", SCAN_INTERVAL_SECONDS="2", WEB_CONCURRENCY="2",
    )
    try:
        commands = readme_commands()
        _manage(commands["migrate"], d.env)
        _manage(commands["collectstatic"], d.env)
        d.password = "Deploy-" + uuid.uuid4().hex
        manage = [".venv/bin/python", "manage.py"]
        _manage([*manage, "createuser", "ops", "--role", "operator", "--password-stdin"], d.env, stdin=d.password + "\n")
        seed = make_seed_run(d.checkpoints / "demo")
        d.seed = seed
        _manage([*manage, "scan", str(d.checkpoints / "demo"), "--name", "demo"], d.env)
        web = list(commands["web"])
        web[web.index("--bind") + 1] = f"127.0.0.1:{d.port}"
        d.start("web", web)
        d.start("worker", commands["rqworker"])
        d.start("scheduler", commands["rqcron"])
        import requests

        def login_page_answers() -> bool:
            assert d.alive("web"), d.log("web")
            try:
                return requests.get(d.base + "/accounts/login/", timeout=10).status_code == 200
            except requests.RequestException:  # not listening yet, or still importing Django
                return False

        wait_for(login_page_answers, timeout=60, what="gunicorn to answer")
        yield d
    finally:
        d.stop()
        redis.stop()
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _session(d: Deployment):
    """A logged-in ``requests`` session, through the login form and its CSRF token."""
    import requests

    s = requests.Session()
    page = s.get(d.base + "/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = s.post(d.base + "/accounts/login/", data={"csrfmiddlewaretoken": token, "username": "ops",
                                                   "password": d.password, "next": "/"}, timeout=10)
    assert r.status_code == 200 and "Log out" in r.text, r.text[:2000]
    return s


def _csrf(page_text: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page_text).group(1)


@pytest.mark.slow
@pytest.mark.tf
def test_documented_deploy_login_history_freeze_download(deployment):
    d = deployment
    s = _session(d)

    history = s.get(d.base + "/runs/demo/", timeout=10)
    assert history.status_code == 200
    assert "default-src 'self'" in history.headers["Content-Security-Policy"]
    prefix = os.path.basename(d.seed.prefixes[-1])
    pk = re.search(rf'href="/runs/demo/checkpoints/(\d+)/"><code>{re.escape(prefix)}</code>', history.text).group(1)

    form = s.get(f"{d.base}/runs/demo/checkpoints/{pk}/freeze/", timeout=10)
    assert form.status_code == 200, form.text[:2000]
    started = s.post(
        f"{d.base}/runs/demo/checkpoints/{pk}/freeze/",
        data={"csrfmiddlewaretoken": _csrf(form.text), "outputs": "probs", "clear_devices": "on"}, timeout=10,
    )
    assert started.status_code == 200 and "Freezing" in started.text, started.text[:3000]

    def export_id() -> str | None:
        assert d.alive("worker"), d.log("worker")
        part = s.get(f"{d.base}/runs/demo/checkpoints/{pk}/exports/", timeout=10).text
        found = re.search(r'href="/exports/(\d+)/download/"', part)
        return found.group(1) if found else None

    export = wait_for(export_id, timeout=180, interval=1, what="the freeze job's export")
    detail = s.get(f"{d.base}/exports/{export}/", timeout=10).text
    shown_sha = re.search(r"<dt>SHA-256</dt><dd><code>([0-9a-f]{64})</code>", detail).group(1)

    digest = hashlib.sha256()
    with s.get(f"{d.base}/exports/{export}/download/", stream=True, timeout=30) as download:
        assert download.status_code == 200
        for chunk in download.iter_content(1 << 16):
            digest.update(chunk)
    assert digest.hexdigest() == shown_sha
    on_disk = list(d.exports.rglob("*.pb"))
    assert len(on_disk) == 1 and hashlib.sha256(on_disk[0].read_bytes()).hexdigest() == shown_sha

    # The scheduler rescans on its own: a checkpoint copied in by hand appears without any click.
    newest = d.checkpoints / "demo" / prefix
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(f"{newest}{suffix}", d.checkpoints / "demo" / f"model.ckpt-9000{suffix}")
    wait_for(lambda: "model.ckpt-9000" in s.get(d.base + "/runs/demo/", timeout=10).text, timeout=60, interval=1,
             what="the periodic rescan to record model.ckpt-9000")
    assert d.alive("scheduler"), d.log("scheduler")


SLOW_CLIENTS = 5
SLOW_RATE = "1M"  # curl: 1 MiB/s
SLOW_SIZE = 75 * 1024 * 1024  # at that rate 75 s: past a minute even with curl's bursts (it averaged 1.1 MiB/s)


@pytest.mark.slow
def test_slow_downloads_run_past_a_minute_while_pages_stay_responsive(deployment):
    """Five clients at 1 MiB/s download a 66 MiB export for over 60 s; pages answer in under 1 s.

    What is tested is the HTTP server (worker class, threads, timeouts), not freezing: the export
    row is created over a file of random bytes of the wanted size, which the download path serves
    like any file (it never parses a ``.pb``). Five clients are more than the README's old
    gunicorn line had workers.
    """
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    d = deployment
    s = _session(d)
    data = os.urandom(SLOW_SIZE)
    target = d.exports / "demo" / "big" / "big.pb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    create = (
        "from dashboard.models import Checkpoint, Export\n"
        "c = Checkpoint.objects.filter(run__name='demo').order_by('-step').first()\n"
        f"e = Export.objects.create(checkpoint=c, path={str(target)!r}, size_bytes={SLOW_SIZE}, "
        f"sha256={expected!r}, outputs=['probs'], verified=True)\n"
        "print('export', e.pk)\n"
    )
    out = _manage([".venv/bin/python", "manage.py", "shell", "-c", create], d.env)
    export = re.search(r"export (\d+)", out).group(1)

    cookie = f"sessionid={s.cookies['sessionid']}"
    started = time.monotonic()
    curls = [
        subprocess.Popen(
            ["curl", "--silent", "--show-error", "--fail", "--limit-rate", SLOW_RATE, "--cookie", cookie,
             "--output", str(d.root / f"slow-{i}.pb"), f"{d.base}/exports/{export}/download/"],
            stderr=subprocess.PIPE,
        )
        for i in range(SLOW_CLIENTS)
    ]
    latencies: list[tuple[float, str, int]] = []
    stop = threading.Event()

    def browse() -> None:
        pages = ["/", "/runs/demo/", "/exports/", "/jobs/"]
        i = 0
        while not stop.is_set():
            url = pages[i % len(pages)]
            t0 = time.monotonic()
            status = s.get(d.base + url, timeout=30).status_code
            latencies.append((time.monotonic() - t0, url, status))
            i += 1
            stop.wait(0.5)

    browser = threading.Thread(target=browse, daemon=True)
    browser.start()
    try:
        codes = [c.wait(timeout=110) for c in curls]
    finally:
        stop.set()
        browser.join(timeout=35)
        for c in curls:
            if c.poll() is None:
                c.kill()
    elapsed = time.monotonic() - started
    errors = [c.stderr.read().decode() for c in curls]
    assert codes == [0] * SLOW_CLIENTS, (codes, errors, d.log("web"))
    assert elapsed > 60, f"the downloads took {elapsed:.0f} s; the throttle did not hold"
    for i in range(SLOW_CLIENTS):
        got = d.root / f"slow-{i}.pb"
        assert got.stat().st_size == SLOW_SIZE
        assert hashlib.sha256(got.read_bytes()).hexdigest() == expected
    during = list(latencies)
    assert len(during) > 60, f"only {len(during)} page requests were made meanwhile"
    assert all(status == 200 for _, _, status in during), during
    slowest = max(during)
    assert slowest[0] < 1.0, f"a page took {slowest[0]:.2f} s during the downloads: {slowest[1]}"
    assert d.alive("web"), d.log("web")


@pytest.mark.slow
def test_shipped_nginx_config_serves_exports_by_x_accel_redirect(deployment, tmp_path):
    """deploy/nginx.conf in front of a gunicorn started with DOWNLOAD_X_ACCEL_REDIRECT: login goes
    through the proxy, the dashboard checks the download and nginx sends the bytes (ranges too);
    the internal location cannot be fetched directly."""
    import requests

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx is not installed")
    d = deployment
    data = os.urandom(3 * 1024 * 1024 + 17)
    target = d.exports / "demo" / "accel" / "accel.pb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    create = (
        "from dashboard.models import Checkpoint, Export\n"
        "c = Checkpoint.objects.filter(run__name='demo').order_by('-step').first()\n"
        f"e = Export.objects.create(checkpoint=c, path={str(target)!r}, size_bytes={len(data)}, "
        f"sha256={hashlib.sha256(data).hexdigest()!r}, outputs=['probs'], verified=True)\n"
        "print('export', e.pk)\n"
    )
    export = re.search(r"export (\d+)", _manage([".venv/bin/python", "manage.py", "shell", "-c", create], d.env)).group(1)

    web_port, proxy_port = free_port(), free_port()
    accel = Deployment(tmp_path)
    accel.env = {**d.env, "DOWNLOAD_X_ACCEL_REDIRECT": "/protected-exports/"}
    web = list(readme_commands()["web"])
    web[web.index("--bind") + 1] = f"127.0.0.1:{web_port}"
    accel.start("web", web)
    server = (BASE_DIR / "deploy" / "nginx.conf").read_text()
    for documented, here in [("server 127.0.0.1:8000;", f"server 127.0.0.1:{web_port};"),
                             ("listen 80;", f"listen 127.0.0.1:{proxy_port};"),
                             ("alias /data/exports/;", f"alias {d.exports}/;")]:
        assert documented in server
        server = server.replace(documented, here)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\nuser root;\n"
        "events {}\n"
        f"http {{\n  access_log {tmp_path}/nginx-access.log;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  fastcgi_temp_path {tmp_path}/fcgi;\n"
        f"  uwsgi_temp_path {tmp_path}/uwsgi;\n  scgi_temp_path {tmp_path}/scgi;\n{server}\n}}\n"
    )
    accel.start("nginx", [nginx, "-p", str(tmp_path), "-c", str(conf)])
    try:
        base = f"http://127.0.0.1:{proxy_port}"

        def answers() -> bool:
            assert accel.alive("nginx"), (tmp_path / "nginx-error.log").read_text(errors="replace")
            try:
                return requests.get(base + "/accounts/login/", timeout=10).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, timeout=60, what="nginx and gunicorn to answer")
        proxied = Deployment(d.root)
        proxied.base, proxied.password = base, d.password
        s = _session(proxied)

        download = s.get(f"{base}/exports/{export}/download/", timeout=30)
        assert download.status_code == 200 and download.content == data
        assert "attachment" in download.headers["Content-Disposition"]
        ranged = s.get(f"{base}/exports/{export}/download/", headers={"Range": "bytes=100-199"}, timeout=30)
        assert ranged.status_code == 206 and ranged.content == data[100:200]
        # gunicorn itself sent no file body: the answer to the dashboard's check was a redirect.
        direct = s.get(f"http://127.0.0.1:{web_port}/exports/{export}/download/", timeout=30)
        assert direct.headers["X-Accel-Redirect"].startswith("/protected-exports/") and direct.content == b""
        assert s.get(f"{base}/protected-exports/demo/accel/accel.pb", timeout=10).status_code == 404
        assert requests.get(f"{base}/exports/{export}/download/", timeout=10, allow_redirects=False).status_code == 302
    finally:
        accel.stop()
