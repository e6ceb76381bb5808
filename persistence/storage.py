"""One storage layer for run directories: local paths, ``s3://bucket/prefix`` and ``gs://bucket/prefix`` URLs.

Discovery and state-file reading go through here, so a run in a bucket is listed, fingerprinted and
read by the same code as a local one. Local paths keep using the operating system directly (their
containment and open-time checks live in ``files``); URLs go through fsspec's ``s3fs``, which takes
credentials, region and endpoint from the usual AWS environment and configuration files
(``AWS_ENDPOINT_URL`` for S3-compatible stores); ``gs://`` URLs go through ``gcsfs``
(``gcs_storage.GcsStorage``, same operations). Nothing here reads Django settings.

Writes to a bucket are few and deliberate: whole objects put with an optional precondition
(``If-Match`` on the ETag a change was computed from, ``If-None-Match: *`` for "only if absent"),
server-side copies, and batch deletes of up to 1,000 keys per request. A precondition that fails
raises :class:`PreconditionFailed`, so a caller can tell "someone else wrote it meanwhile" from any
other failure.

Costs, because buckets bill per request and a watched run is rescanned often: listing a directory
is one LIST request per 1,000 keys (prefix + delimiter, nothing below it), its entries carry what a
fingerprint needs (size, ETag, last modified) so that no HEAD is ever made, and small objects are
read whole with one GET each, many at once.

Messages of :class:`StorageError` name the URL and the reason only; credentials never appear in
them (a URL holding credentials is refused by :func:`parse_url` before any request).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = [
    "SCHEMES", "Entry", "LocalStorage", "ObjectLocation", "ObjectStorage", "PreconditionFailed", "Storage",
    "StorageError",
    "count_requests", "is_url", "join", "parse_url", "resolve_inside", "storage_for",
]

# Schemes a run directory may use.
SCHEMES = ("s3", "gs")

# S3 bucket naming rules (lowercase letters, digits, dots and hyphens, 3-63 characters); GCS also
# allows underscores.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
# Percent-encoding is refused outright: keys are used literally, and "%2F" or "%2E%2E" would turn
# into a separator or a parent reference in any tool that decodes them.
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
# Small objects (state files, ``.index`` files) are fetched this many at a time.
READ_CONCURRENCY = 16


class StorageError(OSError):
    """A listing or read failed; the message names the URL and the reason, never a credential."""


class PreconditionFailed(StorageError):
    """A conditional write found the object changed (or present) since the caller last read it."""


class OutsideRoots(ValueError):
    """A URL is not well formed, or names a key outside every allowed root prefix."""


@dataclass(frozen=True)
class ObjectLocation:
    """A parsed ``scheme://bucket/key`` URL; ``key`` has no leading or trailing ``/``."""

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def contains(self, other: ObjectLocation) -> bool:
        """Whether ``other`` is this location or a key below it (whole path segments only)."""
        if (other.scheme, other.bucket) != (self.scheme, self.bucket):
            return False
        return not self.key or other.key == self.key or other.key.startswith(self.key + "/")


def is_url(path: object) -> bool:
    """Whether ``path`` is an object-storage URL (anything with a scheme) rather than a local path."""
    return isinstance(path, str) and "://" in path


def parse_url(text: str) -> ObjectLocation:
    """Parse and check an object URL; raise :class:`OutsideRoots` with a reason fit to show.

    Refused: unknown schemes, credentials or ports in the bucket part, bad bucket names, empty,
    ``.`` or ``..`` segments, backslashes, percent-encoded characters, queries, fragments and
    control characters. What is accepted maps one to one onto a bucket and a key prefix.
    """
    scheme, sep, rest = (text or "").strip().partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise OutsideRoots(f"Only {', '.join(s + '://' for s in SCHEMES)} URLs are supported.")
    if any(ord(c) < 32 or ord(c) == 127 for c in rest) or "\\" in rest:
        raise OutsideRoots("The URL contains control characters or backslashes.")
    if "?" in rest or "#" in rest:
        raise OutsideRoots("The URL must not contain a query or a fragment.")
    if _PERCENT_ENCODED.search(rest):
        raise OutsideRoots("Percent-encoded characters are not accepted in object URLs.")
    bucket, _, key = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # fsspec would take "key:secret@bucket" as credentials; they belong in the environment.
        raise OutsideRoots("Credentials and ports do not belong in the URL; set them in the environment.")
    if not (_GCS_BUCKET if scheme.lower() == "gs" else _BUCKET).fullmatch(bucket):
        raise OutsideRoots("That is not a valid bucket name.")
    key = key.rstrip("/")
    if key:
        for segment in key.split("/"):
            if segment in ("", ".", ".."):
                raise OutsideRoots("The key must not contain empty, '.' or '..' segments.")
    return ObjectLocation(scheme.lower(), bucket, key)


def resolve_inside(url: str, roots: Iterable[str]) -> str:
    """The canonical form of ``url`` when it lies inside one of the URL ``roots``; raise otherwise.

    Like a local path outside every root, a key outside every root's prefix, a key in another
    bucket, or a URL that does not parse raises :class:`OutsideRoots`.
    """
    location = parse_url(url)
    for root in roots:
        if is_url(root) and parse_url(root).contains(location):
            return str(location)
    raise OutsideRoots(f"{location} is outside the checkpoint roots.")


def join(directory: str, name: str) -> str:
    """``directory/name`` for a base name (no separator, no parent reference) in either kind of path."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise OutsideRoots(f"not a base name: {name!r}")
    return f"{directory.rstrip('/')}/{name}" if is_url(directory) else os.path.join(directory, name)


@dataclass(frozen=True, slots=True)
class Entry:
    """A file in a listing. Shaped like ``os.DirEntry`` where discovery uses one (``name``, ``path``,
    ``is_file()``, ``is_symlink()``, ``stat()``) but filled from the listing: reading its size or
    fingerprint never costs another request."""

    name: str
    path: str
    size: int
    mtime_ns: int
    etag: str = ""

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return True

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return False

    def is_symlink(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> Entry:
        return self

    @property
    def st_size(self) -> int:
        return self.size

    @property
    def st_mtime_ns(self) -> int:
        return self.mtime_ns


class Storage(Protocol):
    """What discovery needs from where a run lives."""

    def list(self, directory: str) -> list[Entry]: ...

    def read_bytes(self, path: str, *, limit: int | None = None) -> bytes: ...

    def read_range(self, path: str, start: int, end: int) -> bytes: ...

    def read_many(self, paths: list[str]) -> dict[str, bytes | Exception]: ...

    def read_many_soon(self, paths: list[str]) -> Future[dict[str, bytes | Exception]]: ...

    def open(self, path: str) -> BinaryIO: ...


class LocalStorage:
    """A local directory; only regular files are listed, symbolic links are left to the caller."""

    def list(self, directory: str) -> list[Entry]:
        entries = []
        with os.scandir(directory) as iterator:
            for item in iterator:
                if item.is_file(follow_symlinks=False):
                    stat = item.stat(follow_symlinks=False)
                    entries.append(Entry(item.name, item.path, stat.st_size, stat.st_mtime_ns))
        return entries

    def read_bytes(self, path: str, *, limit: int | None = None) -> bytes:
        with open(path, "rb") as handle:
            data = handle.read(-1 if limit is None else limit + 1)
        if limit is not None and len(data) > limit:
            raise StorageError(f"{path} is larger than {limit} bytes")
        return data

    def read_range(self, path: str, start: int, end: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def read_many(self, paths: list[str]) -> dict[str, bytes | Exception]:
        out: dict[str, bytes | Exception] = {}
        for path in paths:
            try:
                out[path] = self.read_bytes(path)
            except OSError as exc:
                out[path] = exc
        return out

    def read_many_soon(self, paths: list[str]) -> Future[dict[str, bytes | Exception]]:
        done: Future[dict[str, bytes | Exception]] = Future()
        done.set_result(self.read_many(paths))
        return done

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")


# Callbacks told the operation name of every HTTP request any object-storage client sends
# (retries included): how tests and benchmarks count requests.
_request_listeners: list[Callable[[str], None]] = []
_clients_lock = threading.Lock()
_clients: dict[tuple, Storage] = {}


@contextmanager
def count_requests() -> Iterator[dict[str, int]]:
    """Count the requests object storage sends inside the block, by operation (``ListObjectsV2``, ``GetObject``…)."""
    counts: dict[str, int] = {}

    def listener(operation: str) -> None:
        counts[operation] = counts.get(operation, 0) + 1

    _request_listeners.append(listener)
    try:
        yield counts
    finally:
        _request_listeners.remove(listener)


def notify_request(operation: str) -> None:
    """Tell ``count_requests`` blocks about one request (every object-storage client calls this)."""
    for listener in list(_request_listeners):
        listener(operation)


def _on_send(event_name: str = "", **_: object) -> None:
    notify_request(event_name.rsplit(".", 1)[-1])
    # None: botocore goes on to send the request (anything else would be taken as its response).


def safe_reason(exc: BaseException) -> str:
    """The reason a request failed, as botocore or the OS phrased it (neither includes credentials)."""
    if isinstance(exc, FileNotFoundError):
        return "no such bucket or object"
    if isinstance(exc, PermissionError):
        return "access denied"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _is_precondition_failure(exc: BaseException) -> bool:
    """Whether a failed call was S3 refusing a conditional write (412, or 409 on a racing write)."""
    # s3fs turns client errors into OSError subclasses; botocore's error survives as the cause.
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return True
        seen = seen.__cause__ or seen.__context__
    return "pre-conditions you specified did not hold" in str(exc)


class ObjectStorage:
    """A bucket through ``s3fs``; one instance (and one connection pool) per process and environment."""

    def __init__(self) -> None:
        import s3fs

        # No instance or listing cache: every listing must show the bucket as it is now, and an
        # instance inherited across a fork would carry the parent's event loop.
        self._fs = s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False, cache_regions=False,
            # botocore's default pool (10) would hold back READ_CONCURRENCY reads in flight.
            config_kwargs={"max_pool_connections": READ_CONCURRENCY},
        )
        client = self._fs.connect()
        client.meta.events.register("before-send.s3", _on_send)

    @staticmethod
    def _key(path: str) -> str:
        location = parse_url(path)
        return f"{location.bucket}/{location.key}" if location.key else location.bucket

    def list(self, directory: str) -> list[Entry]:
        """The objects directly under ``directory/`` (not below a further ``/``): one LIST per 1,000 keys."""
        from fsspec.asyn import sync

        base = self._key(directory)
        try:
            # Not ``ls``: on an empty prefix it would look further (more requests) and then say
            # "not found" just as for a missing bucket. An empty prefix is an empty directory;
            # a missing bucket is an error, never an emptied run.
            found = sync(self._fs.loop, self._fs._lsdir, base, refresh=True)
        except Exception as exc:
            raise StorageError(f"cannot list {directory}: {safe_reason(exc)}") from None
        entries = []
        prefix = base.rstrip("/") + "/"
        for item in found:
            name = item.get("name", "")
            if item.get("type") != "file" or not name.startswith(prefix):
                continue
            base_name = name[len(prefix):]
            if not base_name or "/" in base_name:
                continue
            modified = item.get("LastModified")
            mtime_ns = int(modified.timestamp() * 1_000_000_000) if modified is not None else 0
            etag = str(item.get("ETag") or "").strip('"')
            entries.append(Entry(base_name, join(directory, base_name), int(item.get("size") or 0), mtime_ns, etag))
        return entries

    def list_with_prefixes(
        self, directory: str, *, max_pages: int | None = None
    ) -> tuple[list[Entry], list[str], bool]:
        """The objects directly under ``directory/``, the names of its "subdirectories" (common
        prefixes), and whether more were left unlisted: at most ``max_pages`` LIST requests of
        1,000 keys (None: all of them)."""
        location = parse_url(directory)
        prefix = f"{location.key}/" if location.key else ""
        entries: list[Entry] = []
        folders: list[str] = []
        kwargs: dict[str, object] = {"Bucket": location.bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
        pages, truncated = 0, False
        while True:
            try:
                page = self._call("list_objects_v2", directory, **kwargs)
            except FileNotFoundError:
                raise StorageError(f"cannot list {directory}: no such bucket") from None
            pages += 1
            for item in page.get("Contents") or []:
                base_name = str(item.get("Key", ""))[len(prefix):]
                if base_name and "/" not in base_name:
                    modified = item.get("LastModified")
                    mtime_ns = int(modified.timestamp() * 1_000_000_000) if modified is not None else 0
                    entries.append(Entry(base_name, join(directory, base_name), int(item.get("Size") or 0),
                                         mtime_ns, str(item.get("ETag") or "").strip('"')))
            folders.extend(str(p.get("Prefix", ""))[len(prefix):].rstrip("/") for p in page.get("CommonPrefixes") or [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            if max_pages is not None and pages >= max_pages:
                truncated = True
                break
            kwargs["ContinuationToken"] = token
        return entries, [f for f in folders if f], truncated

    def read_bytes(self, path: str, *, limit: int | None = None) -> bytes:
        """The whole object (one GET); with ``limit``, refuse one larger than that (callers that
        list first know sizes and skip such objects before reading)."""
        try:
            # One GET: s3fs would otherwise ask for the size first (a HEAD) to split large objects.
            data = self._fs.cat_file(self._key(path), max_concurrency=1)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None
        if limit is not None and len(data) > limit:
            raise StorageError(f"{path} is larger than {limit} bytes")
        return data

    def read_versioned(self, path: str, *, limit: int | None = None) -> tuple[bytes, str]:
        """The whole object and the ETag of exactly those bytes (one GET).

        What a read-modify-write needs: ``put_bytes(..., if_match=etag)`` then succeeds only if
        nobody wrote the object since this read. A HEAD before or after the GET could pair the
        content of one version with the ETag of another.
        """
        from fsspec.asyn import sync

        location = parse_url(path)

        async def get() -> tuple[bytes, str]:
            response = await self._fs._call_s3("get_object", Bucket=location.bucket, Key=location.key)
            try:
                if limit is not None and int(response.get("ContentLength") or 0) > limit:
                    raise StorageError(f"{path} is larger than {limit} bytes")
                data = await response["Body"].read()
            finally:
                response["Body"].close()
            return data, str(response.get("ETag") or "").strip('"')

        try:
            return sync(self._fs.loop, get)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (one ranged GET)."""
        try:
            return self._fs.cat_file(self._key(path), start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None

    def read_many(self, paths: list[str]) -> dict[str, bytes | Exception]:
        """Each object whole, ``READ_CONCURRENCY`` GETs at a time; a failure is returned in its place."""
        return self.read_many_soon(paths).result()

    def read_many_soon(self, paths: list[str]) -> Future[dict[str, bytes | Exception]]:
        """``read_many`` started now on the client's own event loop thread: the caller goes on
        (parsing, storing what it read before) while the objects arrive."""
        keys = [self._key(p) for p in paths]

        async def fetch_all() -> list[bytes | Exception]:
            gate = asyncio.Semaphore(READ_CONCURRENCY)

            async def fetch(key: str, path: str) -> bytes | Exception:
                async with gate:
                    try:
                        return await self._fs._cat_file(key, max_concurrency=1)
                    except FileNotFoundError:
                        return FileNotFoundError(f"no such object: {path}")
                    except Exception as exc:
                        return StorageError(f"cannot read {path}: {safe_reason(exc)}")

            return await asyncio.gather(*(fetch(k, p) for k, p in zip(keys, paths, strict=True)))

        async def as_dict() -> dict[str, bytes | Exception]:
            return dict(zip(paths, await fetch_all(), strict=True))

        return asyncio.run_coroutine_threadsafe(as_dict(), self._fs.loop)

    def download(self, path: str, fd: int, *, size: int, etag: str, part_size: int = 8 << 20,
                 concurrency: int = 10) -> int:
        """Write the object into the open file ``fd`` (at its offsets) and return the bytes written.

        An object larger than ``part_size`` is fetched as ranged GETs, ``concurrency`` at a time;
        every GET carries ``If-Match: etag``, so parts of two versions of an object are never
        mixed: an object replaced meanwhile fails the read (``StorageError``) instead. ``size`` is
        the listed size; fewer or more bytes than that fail the read as well.
        """
        location = parse_url(path)
        starts = list(range(0, size, part_size)) or [0]

        async def fetch_all() -> int:
            gate = asyncio.Semaphore(max(1, concurrency))

            async def part(start: int) -> int:
                kwargs = {"Bucket": location.bucket, "Key": location.key}
                if etag:
                    kwargs["IfMatch"] = f'"{etag}"'
                if size > part_size:
                    kwargs["Range"] = f"bytes={start}-{min(start + part_size, size) - 1}"
                async with gate:
                    response = await self._fs._call_s3("get_object", **kwargs)
                    try:
                        data = await response["Body"].read()
                    finally:
                        response["Body"].close()
                # Off the event loop: the other parts keep arriving while this one is written.
                await asyncio.to_thread(os.pwrite, fd, data, start)
                return len(data)

            return sum(await asyncio.gather(*(part(s) for s in starts)))

        try:
            written = asyncio.run_coroutine_threadsafe(fetch_all(), self._fs.loop).result()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None
        if written != size:
            raise StorageError(f"cannot read {path}: {written} bytes arrived, the listing said {size}")
        return written

    def _call(self, operation: str, path: str, **kwargs: object) -> dict:
        """One S3 API call on the client's loop, with errors turned into this module's types."""
        from fsspec.asyn import sync

        try:
            return sync(self._fs.loop, self._fs._call_s3, operation, **kwargs)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            if _is_precondition_failure(exc):
                raise PreconditionFailed(f"{path} changed since it was read") from None
            raise StorageError(f"cannot {operation.replace('_', ' ')} {path}: {safe_reason(exc)}") from None

    def head(self, path: str) -> Entry | None:
        """The object's listing entry (size, ETag, last modified), or None when there is none."""
        location = parse_url(path)
        try:
            found = self._call("head_object", path, Bucket=location.bucket, Key=location.key)
        except FileNotFoundError:
            return None
        modified = found.get("LastModified")
        mtime_ns = int(modified.timestamp() * 1_000_000_000) if modified is not None else 0
        return Entry(location.key.rsplit("/", 1)[-1], path, int(found.get("ContentLength") or 0), mtime_ns,
                     str(found.get("ETag") or "").strip('"'))

    def put_bytes(self, path: str, data: bytes, *, if_match: str | None = None,
                  if_absent: bool = False) -> str:
        """Write the whole object in one PUT and return its new ETag.

        ``if_match`` (an ETag) writes only if the object still has that ETag; ``if_absent`` only
        if there is no object yet. Either failing raises :class:`PreconditionFailed` and changes
        nothing: the store checks and writes in one step, which is what makes a read-modify-write
        of a state file safe against a trainer writing the same key.
        """
        location = parse_url(path)
        kwargs: dict[str, object] = {"Bucket": location.bucket, "Key": location.key, "Body": data}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        found = self._call("put_object", path, **kwargs)
        return str(found.get("ETag") or "").strip('"')

    def upload(self, local_path: str | os.PathLike[str], path: str) -> None:
        """Copy a local file to ``path`` (multipart for large files)."""
        try:
            self._fs.put_file(os.fspath(local_path), self._key(path))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot write {path}: {safe_reason(exc)}") from None

    def copy(self, source: str, target: str) -> None:
        """A server-side copy of ``source`` to ``target`` (same bucket or another on this endpoint)."""
        try:
            self._fs.copy(self._key(source), self._key(target))
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {source}") from None
        except Exception as exc:
            raise StorageError(f"cannot copy {source}: {safe_reason(exc)}") from None

    def delete_many(self, paths: list[str]) -> dict[str, str]:
        """Delete objects with batch deletes (1,000 keys per request); return ``{path: reason}`` for
        those that could not be deleted. A key already gone counts as deleted, as S3 reports it."""
        failed: dict[str, str] = {}
        by_bucket: dict[str, list[tuple[str, str]]] = {}
        for path in paths:
            location = parse_url(path)
            by_bucket.setdefault(location.bucket, []).append((location.key, path))
        for bucket, items in by_bucket.items():
            for start in range(0, len(items), 1000):
                chunk = items[start:start + 1000]
                by_key = dict(chunk)
                try:
                    answer = self._call("delete_objects", f"s3://{bucket}", Bucket=bucket, Delete={
                        "Objects": [{"Key": key} for key, _ in chunk], "Quiet": True})
                except (StorageError, FileNotFoundError) as exc:
                    failed.update({path: str(exc) for _, path in chunk})
                    continue
                for error in answer.get("Errors") or []:
                    path = by_key.get(error.get("Key", ""), f"s3://{bucket}/{error.get('Key', '')}")
                    failed[path] = str(error.get("Message") or error.get("Code") or "delete failed")
        return failed

    def presigned_url(self, path: str, *, expires: int = 300, filename: str | None = None) -> str:
        """A URL that lets its holder GET the object for ``expires`` seconds, no credentials needed.

        ``filename`` sets the download's name (``Content-Disposition``) in the signed request.
        """
        location = parse_url(path)
        params: dict[str, object] = {"Bucket": location.bucket, "Key": location.key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        try:
            from fsspec.asyn import sync

            return sync(self._fs.loop, self._presign, params, expires)
        except Exception as exc:
            raise StorageError(f"cannot sign a URL for {path}: {safe_reason(exc)}") from None

    async def _presign(self, params: dict, expires: int) -> str:
        client = await self._fs.get_s3(params["Bucket"])
        return await client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    def open(self, path: str) -> BinaryIO:
        """A streaming reader (ranged GETs as it is read)."""
        try:
            return self._fs.open(self._key(path), "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot open {path}: {safe_reason(exc)}") from None


_LOCAL = LocalStorage()


def storage_for(path: str | os.PathLike[str]) -> Storage:
    """The storage a path lives on: local for plain paths, a bucket client for URLs."""
    if not is_url(path):
        return _LOCAL
    scheme = parse_url(str(path)).scheme
    # Keyed by what selects the account and endpoint, and by process: a worker forked from a
    # process that already had a client must make its own.
    key = (os.getpid(), scheme, *(os.environ.get(name, "") for name in _CLIENT_ENVIRONMENT[scheme]))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if scheme == "gs":
                from persistence.gcs_storage import GcsStorage

                client = _clients[key] = GcsStorage()
            else:
                client = _clients[key] = ObjectStorage()
    return client


_CLIENT_ENVIRONMENT = {
    "s3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION",
           "AWS_REGION"),
    "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"),
}
