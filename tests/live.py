"""Real processes for tests: an RQ worker (and a web server) sharing the test database and Redis.

Tests that use these must be ``@pytest.mark.django_db(transaction=True)``: the worker is another
process and only sees committed rows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database this test is using (pytest-django's test database)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that must see the same database, Redis, queue and roots."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        JOB_QUEUE=settings.JOB_QUEUE,
        CHECKPOINT_ROOTS=os.pathsep.join(
            [*(str(r) for r in settings.CHECKPOINT_ROOTS), *getattr(settings, "CHECKPOINT_OBJECT_ROOTS", [])]
        ),
        EXPORT_ROOT=str(settings.EXPORT_ROOT),
        SERVING_ROOT=str(settings.SERVING_ROOT),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


class LiveWorker:
    """``manage.py rqworker`` with the preloading worker class, in a subprocess of its own."""

    def __init__(self, *, burst: bool = False, log_path: Path | None = None, command_prefix: list[str] | None = None,
                 **env: str):
        self.burst = burst
        self.command_prefix = list(command_prefix or [])
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        cmd = [
            *self.command_prefix,
            sys.executable, str(BASE_DIR / "manage.py"), "rqworker", settings.JOB_QUEUE,
            "--worker-class", "dashboard.worker.PreloadingWorker",
        ]
        return [*cmd, "--burst"] if self.burst else cmd

    def start(self) -> LiveWorker:
        cmd = self.command()
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            cmd, cwd=BASE_DIR, env=subprocess_env(**self.env), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def horse_pids(self) -> list[int]:
        """Work horses are forked children of the worker (each in its own process group)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.process is None:
            return
        for pid in self.horse_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self.process = None

    def __enter__(self) -> LiveWorker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LiveWatcher(LiveWorker):
    """``manage.py watch -v 2`` in a subprocess of its own (one log line per scan it makes).

    ``args``: extra options, e.g. ``["--polling"]``. Give a ``log_path`` to read its lines.
    """

    def __init__(self, *, args: list[str] | None = None, log_path: Path | None = None, **env: str):
        super().__init__(log_path=log_path, **env)
        self.args = list(args or [])

    def command(self) -> list[str]:
        return [sys.executable, str(BASE_DIR / "manage.py"), "watch", "-v", "2", *self.args]

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path and self.log_path.exists() else []

    def wait_until_watching(self, timeout: float = 60) -> None:
        """Until it has imported TensorFlow and made its first pass over the run directories."""
        wait_for(lambda: any(line.startswith("Watching") for line in self.lines()) or self.process.poll() is not None,
                 timeout, what="the watcher to start")
        assert self.process.poll() is None, "\n".join(self.lines())

    def stop(self) -> None:
        """SIGTERM first (the watcher stops cleanly), SIGKILL if it does not within 10 s."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


def without_file_permission_override() -> list[str] | None:
    """A command prefix that drops root's power to ignore file permissions (so that a file with mode
    000 really cannot be read: the tests run as root); ``[]`` when not root, None when impossible."""
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if os.geteuid() != 0:
        return []  # permission bits apply already
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def run_jobs_to_completion(timeout: float = 120) -> None:
    """Process everything queued so far with a burst worker (real process, real Redis)."""
    worker = LiveWorker(burst=True).start()
    try:
        code = worker.wait(timeout)
    finally:
        worker.stop()
    if code != 0:
        raise RuntimeError(f"burst worker exited with code {code}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def module_roots(tmp_path_factory, tag: str) -> Iterator[Path]:
    """Checkpoint and export roots of their own for a whole test module (``base/checkpoints``,
    ``base/exports``), for modules whose live worker outlives any one test's ``settings``."""
    from django.test import override_settings

    base = tmp_path_factory.mktemp(tag)
    (base / "checkpoints").mkdir()
    with override_settings(CHECKPOINT_ROOTS=[(base / "checkpoints").resolve()],
                           EXPORT_ROOT=(base / "exports").resolve(), SERVING_ROOT=(base / "serving").resolve()):
        yield base.resolve()


@contextmanager
def module_worker(django_db_blocker, tmp_path_factory, *, command_prefix: list[str] | None = None,
                  **env: str) -> Iterator[LiveWorker]:
    """A live worker for a whole test module, on an emptied queue (jobs enqueued by page tests whose
    rows were rolled back must not run); ``env``: settings of its own, as environment variables."""
    from dashboard import jobs

    with django_db_blocker.unblock():
        jobs.get_queue().empty()
        kwargs = {"command_prefix": command_prefix} if command_prefix else {}
        live = LiveWorker(log_path=tmp_path_factory.mktemp("worker") / "worker.log", **kwargs, **env).start()
    try:
        yield live
    finally:
        live.stop()
