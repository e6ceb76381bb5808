"""Where the browser flows keep a run's checkpoints: a local directory under the root, or a prefix in
the loopback S3 server's bucket (``tests/s3_server.py``).

The flows are written once against :class:`Backend`: they put a run's files in place, read what an
action left there, and delete files behind the dashboard's back, without caring which one it is.
The bucket side uses boto3 directly, not the dashboard's own storage layer, so a check of what is
in the bucket does not go through the code it checks.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET

LOCAL, S3 = "local", "s3"
BACKENDS = (LOCAL, S3)
# The credentials must never reach a page: every body the browser receives in s3 mode is searched.
CREDENTIALS = (FAKE_SECRET.encode(), FAKE_KEY_ID.encode())


class Backend:
    """One storage backend for the runs of a browser test."""

    def __init__(self, name: str, *, local_root: Path, bucket=None):
        self.name = name
        self.local_root = local_root
        self.bucket = bucket  # a tests.s3_server.Bucket in s3 mode

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    @property
    def is_s3(self) -> bool:
        return self.name == S3

    def directory(self, name: str) -> str:
        """Where the run called ``name`` lives: its directory, or its ``s3://`` prefix."""
        if self.is_s3:
            return self.bucket.url(f"runs/{name}")
        return str(self.local_root / name)

    def clear(self, name: str) -> None:
        """Remove everything of the run called ``name`` (left from an earlier test)."""
        if self.is_s3:
            keys = self.bucket.keys(f"runs/{name}/")
            for start in range(0, len(keys), 1000):
                self.bucket.client.delete_objects(Bucket=self.bucket.name, Delete={
                    "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})
        else:
            shutil.rmtree(self.local_root / name, ignore_errors=True)

    def put_tree(self, source: Path, name: str) -> str:
        """Copy a local directory (subdirectories too, mtimes kept locally) to the run called ``name``."""
        self.clear(name)
        if not self.is_s3:
            shutil.copytree(source, self.local_root / name)
            return self.directory(name)
        files = [path for path in sorted(Path(source).rglob("*")) if path.is_file()]

        def put(path: Path) -> None:
            key = f"runs/{name}/{path.relative_to(source).as_posix()}"
            self.bucket.client.put_object(Bucket=self.bucket.name, Key=key, Body=path.read_bytes())

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))
        return self.directory(name)

    def make_empty(self, name: str) -> str:
        """An empty run location (a bucket has no directories: an empty prefix is nothing at all)."""
        self.clear(name)
        if not self.is_s3:
            (self.local_root / name).mkdir()
        return self.directory(name)

    def _key(self, directory: str, name: str = "") -> str:
        prefix = directory.removeprefix(f"s3://{self.bucket.name}/").strip("/")
        return f"{prefix}/{name}" if name else f"{prefix}/"

    def files(self, directory: str) -> set[str]:
        """The names of the files directly in a run's location."""
        if not self.is_s3:
            return {entry.name for entry in os.scandir(directory) if entry.is_file()}
        prefix = self._key(directory)
        return {key[len(prefix):] for key in self.bucket.keys(prefix) if "/" not in key[len(prefix):]}

    def read_text(self, directory: str, name: str) -> str:
        if not self.is_s3:
            return Path(directory, name).read_text()
        return self.bucket.get(self._key(directory, name)).decode()

    def delete(self, directory: str, name: str) -> None:
        """Delete one file behind the dashboard's back (as a person or another tool would)."""
        if self.is_s3:
            self.bucket.delete(self._key(directory, name))
        else:
            Path(directory, name).unlink()

    def exists(self, directory: str, name: str) -> bool:
        return name in self.files(directory)


class BucketSync:
    """Mirror a local directory into a run's prefix every ``interval`` seconds, until stopped: what a
    trainer that writes locally and syncs to a bucket (``aws s3 sync --delete``) looks like from the
    dashboard. Within a pass, data shards go before their ``.index`` and state files go last, so a
    listing never shows an index without its data or a state file ahead of what it names."""

    def __init__(self, source: Path, backend: Backend, name: str, *, interval: float = 0.25):
        import threading

        assert backend.is_s3
        self.source, self.backend, self.name, self.interval = Path(source), backend, name, interval
        self.uploads = 0
        self.errors: list[str] = []
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sync-{name}", daemon=True)

    @staticmethod
    def _order(relative: str) -> tuple[int, str]:
        base = relative.rsplit("/", 1)[-1]
        rank = 2 if "checkpoint" in base and "." not in base else 1 if base.endswith(".index") else 0
        return rank, relative

    def sync_once(self) -> None:
        bucket = self.backend.bucket
        now: dict[str, tuple[int, int]] = {}
        for path in self.source.rglob("*"):
            try:
                if path.is_file():
                    stat = path.stat()
                    now[path.relative_to(self.source).as_posix()] = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:  # removed by the trainer while listed
                continue
        for relative in sorted(now, key=self._order):
            if self._seen.get(relative) == now[relative]:
                continue
            try:
                body = (self.source / relative).read_bytes()
            except FileNotFoundError:
                now.pop(relative)
                continue
            bucket.client.put_object(Bucket=bucket.name, Key=f"runs/{self.name}/{relative}", Body=body)
            self.uploads += 1
        for relative in set(self._seen) - set(now):
            bucket.delete(f"runs/{self.name}/{relative}")
        self._seen = now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_once()
            except Exception as exc:  # reported by stop(): a sync that died must fail the test
                self.errors.append(repr(exc))

    def __enter__(self) -> BucketSync:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sync_once()
        assert not self.errors, self.errors
