"""A real S3-compatible HTTP server on loopback for the object-storage tests (moto's server).

One server per test process (session scope, a free port), used through the real client stack:
boto3 to put objects, the dashboard's ``persistence.storage`` (s3fs, aiobotocore) to read them.
The AWS environment that points clients at it is set for each test only (``s3_env``), holding a
recognisable fake secret that tests grep for; each test gets a bucket of its own, so tests stay
independent under xdist.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Recognisable in any page, log line or job record it might leak into.
FAKE_SECRET = "FAKE-SECRET-do-not-show-7f3c9e"
FAKE_KEY_ID = "AKIAFAKEKEYID0000001"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto server running for the whole test session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    """Point every AWS client at the test server, for this test only."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


@dataclass
class Bucket:
    name: str
    client: object  # a boto3 S3 client

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}".rstrip("/")

    def upload_directory(self, local: str | os.PathLike[str], prefix: str) -> list[str]:
        """Upload the files directly in ``local`` under ``prefix/``; return their keys."""
        keys = []
        for name in sorted(os.listdir(local)):
            path = os.path.join(local, name)
            if os.path.isfile(path):
                key = f"{prefix.strip('/')}/{name}"
                with open(path, "rb") as handle:
                    self.client.put_object(Bucket=self.name, Key=key, Body=handle.read())
                keys.append(key)
        return keys

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def s3_bucket(s3_env) -> Bucket:
    """A new, empty bucket for this test."""
    import boto3

    client = boto3.client("s3")
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client)
