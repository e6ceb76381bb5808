"""Under load: the history page of a 100,000-checkpoint run, 20 clients at once for 30 s, against
gunicorn started exactly as the README's production section starts it.

Set-up, each in its own process with the production environment (``DEBUG=0``, a ``SECRET_KEY``,
``ALLOWED_HOSTS``): the database. When the benchmarks run on PostgreSQL (``DATABASE_URL``), it is
theirs, holding the scale group's data set (``bench/scale.py``: the 100,000-checkpoint run among
1,000 runs and 1,000,000 rows, summaries rebuilt), made there first if that group has not run:
one data set for both. Otherwise a PostgreSQL database of its own (``BENCH_LOAD_DB``, default
``bench_load``, dropped and created afresh on the server of ``BENCH_PG_URL``, default
``postgres://postgres@127.0.0.1:5432``) gets the same data set (``BENCH_LOAD_RUNS`` runs and
``BENCH_LOAD_TOTAL`` rows). Then the README's ``migrate`` and ``collectstatic``, a viewer made with
``manage.py createuser``, a private redis-server for the cache, then the README's gunicorn line
(``gunicorn.conf.py``: 4 gthread workers, whitenoise), bound to a free loopback port.
``SECURE_COOKIES=0`` because this speaks plain HTTP.

The generator: ``BENCH_LOAD_CLIENTS`` (20) threads in this process, each with its own keep-alive
``http.client`` connection and the viewer's session cookie (logged in through the login form),
each sending the next request when the last one is answered (a closed loop), for
``BENCH_LOAD_SECONDS`` (30) after every client and worker was warmed up. A response counts as an
error unless it is a 200 holding the newest checkpoint's row. Figures: requests per second,
median and 99th-percentile latency, errors, and the gunicorn workers' RSS just before and just
after the load. Spread: the same figures per 5-second window. The generator's own CPU (its
process's CPU time over the wall time) and the workers' CPU per request are recorded beside them
so that it is visible which side was the bottleneck; so is a ceiling: the same clients for a third
of the time against a static file whitenoise serves from the same workers.

Not measured: a cold database or page cache (the first requests warm them), TLS, a proxy in front,
other pages, clients on another machine (they share the two cores with the server here).
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from bench.harness import entry, fresh_postgres_database

BASE_DIR = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", "20"))
SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "30"))
RUNS = int(os.environ.get("BENCH_LOAD_RUNS", "1000"))
BIG = int(os.environ.get("BENCH_SCALE_BIG", "100000"))  # the scale group's big run, whose rows are read
TOTAL = int(os.environ.get("BENCH_LOAD_TOTAL", "1000000"))
DB_NAME = os.environ.get("BENCH_LOAD_DB", "bench_load")
WINDOW_SECONDS = 5.0
VIEWER = f"load-viewer-{secrets.token_hex(4)}"  # the database may be shared with earlier runs
PAGE = "/runs/big/"
MARKER = f"model.ckpt-{BIG}<".encode()


def prepare() -> None:
    """In a child process configured for the benchmark's database: the scale data set."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    django.setup()
    print(_dataset(Path(os.environ["CHECKPOINT_ROOTS"]).parent))


def _dataset(work: Path) -> str:
    """The scale data set in the configured database (made unless there); a line saying which."""
    from bench.scale import ensure_dataset

    made = ensure_dataset(work, runs=RUNS, big=BIG, total=max(TOTAL, BIG))
    if made["seconds"] is None:
        return f"rows {made['checkpoints']} (the scale group's data set, found in the database)"
    return (f"rows {made['checkpoints']} in {made['seconds']:.1f} s, summaries rebuilt in "
            f"{made['rebuild_seconds']:.1f} s")


def _shared_database_url() -> str | None:
    """This process's database when it is PostgreSQL (where the scale group leaves its data set):
    the load then reads the same rows instead of making them a second time."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    db = connection.settings_dict
    auth = db["USER"] or "postgres"
    if db["PASSWORD"]:
        auth += f":{quote(db['PASSWORD'], safe='')}"
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class _Client(threading.Thread):
    """One client: a keep-alive connection, the next request as soon as the last is answered."""

    def __init__(self, port: int, cookie: str, path: str, marker: bytes, until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.cookie, self.path, self.marker, self.until = port, cookie, path, marker, until
        self.samples: list[tuple[float, float, bool]] = []  # (answered at, latency, ok)

    def run(self) -> None:
        conn = None
        while time.perf_counter() < self.until:
            started = time.perf_counter()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("GET", self.path, headers={"Cookie": self.cookie})
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and self.marker in body
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            ended = time.perf_counter()
            self.samples.append((ended, ended - started, ok))
        if conn is not None:
            conn.close()


def drive(port: int, cookie: str, path: str, marker: bytes, seconds: float, clients: int = CLIENTS) -> dict:
    """``clients`` closed-loop clients for ``seconds``; figures of what they saw."""
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    threads = [_Client(port, cookie, path, marker, started + seconds) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    samples = sorted(s for t in threads for s in t.samples)
    latencies = sorted(latency for _, latency, _ in samples)
    windows = []
    for start in range(int(seconds // WINDOW_SECONDS)):
        low, high = started + start * WINDOW_SECONDS, started + (start + 1) * WINDOW_SECONDS
        inside = sorted(latency for at, latency, _ in samples if low <= at < high)
        if inside:
            windows.append({"rps": round(len(inside) / WINDOW_SECONDS, 1),
                            "p50_ms": round(1000 * _percentile(inside, 50)),
                            "p99_ms": round(1000 * _percentile(inside, 99))})
    return {
        "requests": len(samples),
        "rps": len(samples) / wall,
        "p50_ms": 1000 * _percentile(latencies, 50),
        "p99_ms": 1000 * _percentile(latencies, 99),
        "errors": sum(1 for _, _, ok in samples if not ok),
        "wall_seconds": wall,
        "generator_cpu_seconds": cpu,
        "windows": windows,
    }


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def _login(port: int, password: str) -> str:
    """Log in through the login form (CSRF token and all); return the Cookie header's value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/accounts/login/")
    page = conn.getresponse()
    html = page.read().decode()
    csrf_cookie = _cookies(page)["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    form = urlencode({"csrfmiddlewaretoken": token, "username": VIEWER, "password": password, "next": "/"})
    conn.request("POST", "/accounts/login/", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf_cookie}",
        "Referer": f"http://127.0.0.1:{port}/accounts/login/"})
    answer = conn.getresponse()
    answer.read()
    session = _cookies(answer).get("sessionid")
    conn.close()
    if answer.status != 302 or not session:
        raise RuntimeError(f"login answered {answer.status} without a session")
    return f"sessionid={session}; csrftoken={csrf_cookie}"


def _cookies(response: http.client.HTTPResponse) -> dict[str, str]:
    found = {}
    for header in response.headers.get_all("Set-Cookie") or []:
        name, _, rest = header.partition("=")
        found[name.strip()] = rest.split(";", 1)[0]
    return found


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            pass
    return total / ticks


def _static_path(port: int, cookie: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", PAGE, headers={"Cookie": cookie})
    html = conn.getresponse().read().decode()
    conn.close()
    return re.search(r'href="(/static/[^"]+\.css)"', html).group(1)


def run(work: Path) -> dict[str, dict]:
    from bench.downloads import _free_port, _rss_mb, _server_pids, _Servers
    from dashboard.localredis import PrivateRedis
    from tests.deploy.test_documented_deploy import readme_commands

    commands = readme_commands()
    database_url = _shared_database_url()
    shared = database_url is not None
    if shared:
        made = _dataset(work)
    else:
        database_url = fresh_postgres_database(DB_NAME)
    password = secrets.token_hex(16)
    redis = PrivateRedis(work / "load-redis" / "redis.sock").start()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "STATIC_ROOT", "JOB_QUEUE")},
        "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url, "REDIS_URL": redis.url, "SECURE_COOKIES": "0", "SCAN_INTERVAL_SECONDS": "0",
        "CHECKPOINT_ROOTS": str(work / "checkpoints"), "EXPORT_ROOT": str(work / "load" / "exports"),
        "VAR_DIR": str(work / "load" / "var"), "STATIC_ROOT": str(work / "load" / "static"),
        "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
    }
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)

    def manage(argv: list[str], stdin: str | None = None) -> str:
        done = subprocess.run(argv, cwd=BASE_DIR, env=env, input=stdin, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    servers = _Servers(work)
    try:
        manage(commands["migrate"])
        manage(commands["collectstatic"])
        if not shared:
            made = manage([sys.executable, "-m", "bench.load", "prepare"]).strip().splitlines()[-1]
        manage([".venv/bin/python", "manage.py", "createuser", VIEWER, "--role", "viewer", "--password-stdin"],
               stdin=password + "\n")
        port = _free_port()
        web = list(commands["web"])
        web[web.index("--bind") + 1] = f"127.0.0.1:{port}"
        master = servers.start("gunicorn-load", web, env, port)
        cookie = _login(port, password)
        workers = [pid for pid in _server_pids(master.pid) if pid != master.pid]
        # Warm-up: every client's connection, every worker's imports, templates and connection.
        warm = drive(port, cookie, PAGE, MARKER, seconds=5.0)
        if warm["errors"] == warm["requests"]:
            raise RuntimeError("every warm-up request of the history page failed")
        workers = [pid for pid in _server_pids(master.pid) if pid != master.pid]
        rss_before = _rss_mb(workers)
        server_cpu = _cpu_seconds(workers)
        load = drive(port, cookie, PAGE, MARKER, SECONDS)
        server_cpu = _cpu_seconds(workers) - server_cpu
        rss_after = _rss_mb(workers)
        static = _static_path(port, cookie)
        ceiling = drive(port, cookie, static, b"", max(5.0, SECONDS / 3))
        load_average = round(os.getloadavg()[0], 2)
    finally:
        servers.stop()
        redis.stop()
    conditions = {
        "clients": CLIENTS, "seconds": SECONDS, "url": PAGE, "checkpoints_in_run": BIG,
        "dataset": made, "database_shared_with_scale": shared, "gunicorn_workers": len(workers), "load_average": load_average,
        "generator_cpu_share_of_one_core": round(load["generator_cpu_seconds"] / load["wall_seconds"], 3),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, load["requests"]), 1),
        "windows": load["windows"], "database": "postgresql",
    }
    return {
        "load_history_100k_rps": entry(load["rps"], ceiling["rps"], "req/s", "value >= 60", requests=load["requests"],
                                       baseline_is="the same clients fetching a static file from the same workers",
                                       **conditions),
        "load_history_100k_p99_ms": entry(load["p99_ms"], None, "ms", "value <= 1000", p50_ms=load["p50_ms"],
                                          clients=CLIENTS, seconds=SECONDS),
        "load_history_100k_errors": entry(load["errors"], None, "requests", "value <= 0",
                                          requests=load["requests"]),
        "load_web_rss_growth_mb": entry(rss_after - rss_before, None, "MB", "value <= 50",
                                        rss_before_mb=round(rss_before, 1), rss_after_mb=round(rss_after, 1),
                                        workers=len(workers)),
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["prepare"]:
        prepare()
    else:
        print("usage: python -m bench.load prepare   (run by `python -m bench load`)")
