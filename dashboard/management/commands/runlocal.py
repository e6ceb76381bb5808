"""Start everything the dashboard needs on one machine; Ctrl-C stops all of it.

A private redis-server (unless ``REDIS_URL`` is set), one RQ worker that preloads TensorFlow, the
RQ cron scheduler (periodic rescans), the directory watcher (records checkpoints as they are
written), and the web server on http://127.0.0.1:8000.

It supervises them: a child that exits is started again (with a growing delay if it keeps
exiting), and so is the private redis-server if it dies; the worker and scheduler wait for it.

This is how people run the dashboard on their own machine, so it serves what production serves:
DEBUG off (the site's own error pages, static files through whitenoise) unless ``DEBUG=1`` is set,
and a quiet console: workers and the scheduler log warnings only unless ``LOG_LEVEL`` asks for more.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from dashboard.localredis import PrivateRedis

RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
# A child that ran this long before exiting was not crash-looping: restart it without delay.
STABLE_SECONDS = 60.0
# rqworker's verbosity for each LOG_LEVEL; unset means warnings only.
WORKER_VERBOSITY = {"DEBUG": "2", "INFO": "1"}


def _die_with_parent() -> None:
    # If this launcher is killed outright, the kernel sends SIGTERM to each child: no strays.
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def local_environment(environ: os._Environ | dict, var_dir: Path, addr: str) -> dict[str, str]:
    """The children's environment: production-like settings for one machine, unless set already."""
    env = dict(environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env.get("DEBUG", "").strip():
        return env
    env["DEBUG"] = "0"
    if not env.get("SECRET_KEY"):
        env["SECRET_KEY"] = _local_secret_key(var_dir)
    host = addr.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    env.setdefault("ALLOWED_HOSTS", ",".join(dict.fromkeys([host, "127.0.0.1", "localhost", "[::1]"])))
    # Plain HTTP on this machine: cookies marked Secure would never come back, and nobody could log in.
    env.setdefault("SECURE_COOKIES", "0")
    return env


def _local_secret_key(var_dir: Path) -> str:
    # Kept across restarts so that sessions survive them; readable by this user only.
    path = var_dir / "secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


def _answers(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def ready_banner(addr: str, var_dir: Path, env: dict[str, str]) -> str:
    """One block that says where to go and how to log in, printed once the web server answers."""
    credentials = var_dir / "initial-admin-password.txt"
    if credentials.exists():
        user = (credentials.read_text().split() or ["admin"])[0]
        login = [f"  user      {user}", f"  password  in {credentials}"]
    else:
        login = ["  log in    with your account (new ones: manage.py createuser)"]
    mode = "DEBUG on: error pages show tracebacks" if env.get("DEBUG") != "0" else "DEBUG off (DEBUG=1 shows tracebacks)"
    level = env.get("LOG_LEVEL", "").strip().upper()
    console = f"LOG_LEVEL={level}" if level else "warnings only (LOG_LEVEL=INFO or DEBUG shows more)"
    line = "─" * 72
    return "\n".join([
        line,
        "  The checkpoint dashboard is running",
        f"  open      http://{addr}/",
        *login,
        f"  console   {console} · {mode}",
        "  stop      Ctrl-C (stops the web server, workers, watcher, scheduler and Redis)",
        line,
    ])


class Command(BaseCommand):
    help = ("Run the web server, a worker, the scheduler, the directory watcher and (if REDIS_URL is unset) "
            "a private redis-server.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address for the web server.")
        parser.add_argument(
            "--workers", type=int, default=2,
            help="Number of RQ workers (two, so rescans and reconciling go on during a long save).",
        )

    def handle(self, *args, **options) -> None:
        for directory in [settings.VAR_DIR, *settings.CHECKPOINT_ROOTS, settings.EXPORT_ROOT]:
            if "://" not in str(directory):  # a bucket export root has nothing to create
                os.makedirs(directory, exist_ok=True)
        env = local_environment(os.environ, Path(settings.VAR_DIR), options["addr"])
        if env.get("DEBUG") == "0":
            self.stdout.write("collecting static files …")
            subprocess.run(
                [sys.executable, str(settings.BASE_DIR / "manage.py"), "collectstatic", "--noinput", "-v", "0"],
                env=env, cwd=settings.BASE_DIR, check=True,
            )
        log_level = os.environ.get("LOG_LEVEL", "").strip().upper()
        private_redis = None
        if not os.environ.get("REDIS_URL"):
            private_redis = PrivateRedis(settings.VAR_DIR / "redis.sock").start()
            env["REDIS_URL"] = private_redis.url
            self.stdout.write(f"redis-server (private) on {private_redis.socket_path}")

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        commands = {
            **{
                f"worker-{i + 1}": [*manage, "rqworker", settings.JOB_QUEUE,
                                    "--worker-class", "dashboard.worker.PreloadingWorker",
                                    "--verbosity", WORKER_VERBOSITY.get(log_level, "0")]
                for i in range(max(1, options["workers"]))
            },
            "scheduler": [*manage, "rqcron", "dashboard.cron", "--logging-level",
                          log_level if log_level in ("DEBUG", "INFO", "ERROR", "CRITICAL") else "WARNING"],
            "watcher": [*manage, "watch"],
            "web": [*manage, "runserver", options["addr"], "--noreload"],
        }
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        started_at: dict[str, float] = {}
        delays: dict[str, float] = {}
        restart_at: dict[str, float] = {}

        def spawn(name: str) -> None:
            children[name] = subprocess.Popen(
                commands[name], env=env, cwd=settings.BASE_DIR, start_new_session=True, preexec_fn=_die_with_parent
            )
            started_at[name] = time.monotonic()

        try:
            for name in commands:
                spawn(name)
            announced = False
            redis_retry_at = 0.0
            while not stopping:
                now = time.monotonic()
                if not announced and _answers(options["addr"]):
                    announced = True
                    self.stdout.write(self.style.SUCCESS(ready_banner(options["addr"], Path(settings.VAR_DIR), env)))
                if private_redis is not None and not private_redis.running and now >= redis_retry_at:
                    redis_retry_at = self._restart_redis(private_redis, now)
                for name, child in list(children.items()):
                    if child.poll() is None:
                        continue
                    if name not in restart_at:
                        if now - started_at[name] >= STABLE_SECONDS:
                            delays[name] = 0.0
                        else:
                            delays[name] = min(max(2 * delays.get(name, 0.0), RESTART_FIRST_SECONDS),
                                               RESTART_MAX_SECONDS)
                        restart_at[name] = now + delays[name]
                        self.stderr.write(
                            f"{name} exited with code {child.returncode}; restarting in {delays[name]:.0f} s"
                        )
                    elif now >= restart_at[name]:
                        del restart_at[name]
                        spawn(name)
                time.sleep(0.3)
        finally:
            self._stop_all(children)
            if private_redis is not None:
                private_redis.stop()
            self.stdout.write("Stopped.")

    def _restart_redis(self, private_redis: PrivateRedis, now: float) -> float:
        """Start the private redis-server again; return when to try next if that failed."""
        self.stderr.write("redis-server (private) is not running; starting it again")
        try:
            private_redis.start()
        except RuntimeError as exc:
            self.stderr.write(f"redis-server did not start: {exc}; trying again in 5 s")
            return now + 5
        return 0.0

    @staticmethod
    def _stop_all(children: dict[str, subprocess.Popen]) -> None:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        # RQ treats the first SIGTERM as "finish the current job" and ignores a repeat within a
        # second; a later second one makes the worker kill its work horse (which runs in a process
        # group of its own) before it exits.
        time.sleep(1.2)
        for name, child in children.items():
            if name.startswith("worker") and child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
