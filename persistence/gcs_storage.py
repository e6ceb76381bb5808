"""``gs://bucket/prefix`` run directories: Google Cloud Storage through fsspec's ``gcsfs``.

The same operations as ``storage.ObjectStorage`` offers for S3, with the same costs and the same
errors, over the GCS JSON API. Differences a caller may notice:

- An entry's ``etag`` is the object's *generation* (a number GCS assigns at every write). It plays
  the part of an S3 ETag everywhere: a fingerprint that changes whenever the object is replaced,
  and the token of a conditional write (``ifGenerationMatch``; ``0`` for "only if absent").
- Batch deletes are sent as one DELETE per object, a few at a time (GCS's batch endpoint is not
  offered by every GCS-compatible server, and a 404 means "already gone", which is what we want).
- A signed URL needs credentials that can sign (a service account key); with any other credentials
  :meth:`GcsStorage.presigned_url` refuses with a :class:`StorageError` that says so, and callers
  stream the object themselves.

Credentials and endpoint come from the usual Google environment (``GOOGLE_APPLICATION_CREDENTIALS``,
the metadata server on GCP) or ``STORAGE_EMULATOR_HOST`` for a GCS-compatible server, in which case
requests are anonymous. gcsfs is imported only when a ``gs://`` path is first used.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import Future
from datetime import datetime
from typing import BinaryIO

from persistence.storage import (
    READ_CONCURRENCY,
    Entry,
    PreconditionFailed,
    StorageError,
    join,
    notify_request,
    parse_url,
    safe_reason,
)

# Per-object deletes in flight at once.
DELETE_CONCURRENCY = 8
PAGE_SIZE = 1000


def _operation(method: str, path: str, params: dict) -> str:
    """The name a request is counted under, like the S3 operation of the same effect."""
    if "upload/" in path or "uploadType" in params:
        return "PutObject"
    if "rewriteTo" in path or "copyTo" in path:
        return "CopyObject"
    if method == "DELETE":
        return "DeleteObject"
    if params.get("alt") == "media" or "/download/" in path:
        return "GetObject"
    if path.rstrip("/").endswith("/o") or path == "b/{}/o":
        return "ListObjects"
    return "HeadObject"


def _mtime_ns(item: dict) -> int:
    text = item.get("updated") or item.get("timeCreated")
    if not text:
        return 0
    return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1_000_000_000)


class GcsStorage:
    """A GCS bucket through ``gcsfs``; one instance (and connection pool) per process and environment."""

    def __init__(self) -> None:
        # The core filesystem, not gcsfs's default "extended" one: that one first asks a gRPC
        # control-plane API about every bucket's layout, which plain objects do not need.
        from gcsfs.core import GCSFileSystem

        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        self._fs = GCSFileSystem(
            token="anon" if emulator else None,
            skip_instance_cache=True, use_listings_cache=False,
            project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None,
        )
        original = self._fs._request

        async def counted(method, path, *args, **kwargs):
            notify_request(_operation(method, str(path), kwargs))
            return await original(method, path, *args, **kwargs)

        self._fs._request = counted

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._fs.loop).result()

    @staticmethod
    def _entry(directory: str, base_name: str, item: dict) -> Entry:
        return Entry(base_name, join(directory, base_name), int(item.get("size") or 0), _mtime_ns(item),
                     str(item.get("generation") or ""))

    async def _list_page(self, bucket: str, prefix: str, token: str | None) -> dict:
        params = {"prefix": prefix, "delimiter": "/", "maxResults": PAGE_SIZE}
        if token:
            params["pageToken"] = token
        return await self._fs._call("GET", "b/{}/o", bucket, json_out=True, **params)

    def list(self, directory: str) -> list[Entry]:
        """The objects directly under ``directory/`` (not below a further ``/``): one LIST per 1,000 keys."""
        return self.list_with_prefixes(directory)[0]

    def list_with_prefixes(
        self, directory: str, *, max_pages: int | None = None
    ) -> tuple[list[Entry], list[str], bool]:
        """The objects directly under ``directory/``, the names of the "subdirectories" (common
        prefixes) there, and whether more were left unlisted: at most ``max_pages`` LIST requests."""
        location = parse_url(directory)
        prefix = f"{location.key}/" if location.key else ""
        entries: list[Entry] = []
        prefixes: list[str] = []
        token = None
        pages, truncated = 0, False
        try:
            while True:
                page = self._run(self._list_page(location.bucket, prefix, token))
                pages += 1
                for item in page.get("items") or []:
                    base_name = str(item.get("name", ""))[len(prefix):]
                    if base_name and "/" not in base_name:
                        entries.append(self._entry(directory, base_name, item))
                prefixes.extend(p[len(prefix):].rstrip("/") for p in page.get("prefixes") or [])
                token = page.get("nextPageToken")
                if not token:
                    break
                if max_pages is not None and pages >= max_pages:
                    truncated = True
                    break
        except FileNotFoundError:
            raise StorageError(f"cannot list {directory}: no such bucket") from None
        except Exception as exc:
            raise StorageError(f"cannot list {directory}: {safe_reason(exc)}") from None
        return entries, [p for p in prefixes if p], truncated

    def _media(self, path: str, *, start: int | None = None, end: int | None = None,
               generation: str = "") -> bytes:
        location = parse_url(path)

        async def get() -> bytes:
            headers = {"Range": f"bytes={start}-{end - 1}"} if start is not None and end is not None else None
            params = {"alt": "media"}
            if generation:
                params["generation"] = generation
            _, body = await self._fs._call("GET", "b/{}/o/{}", location.bucket, location.key, headers=headers,
                                           **params)
            return body

        try:
            if start is not None and end is not None and end <= start:
                return b""
            return self._run(get())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None

    def read_bytes(self, path: str, *, limit: int | None = None) -> bytes:
        """The whole object (one GET); with ``limit``, refuse one larger than that."""
        data = self._media(path)
        if limit is not None and len(data) > limit:
            raise StorageError(f"{path} is larger than {limit} bytes")
        return data

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (one ranged GET)."""
        return self._media(path, start=start, end=end)

    def read_versioned(self, path: str, *, limit: int | None = None) -> tuple[bytes, str]:
        """The whole object and the generation of exactly those bytes (one GET: the generation
        comes back in the response's ``x-goog-generation`` header), for a read-modify-write."""
        location = parse_url(path)

        async def get() -> tuple[bytes, str]:
            headers, body = await self._fs._call("GET", "b/{}/o/{}", location.bucket, location.key, alt="media")
            found = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
            return body, found.get("x-goog-generation", "")

        try:
            data, generation = self._run(get())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None
        if limit is not None and len(data) > limit:
            raise StorageError(f"{path} is larger than {limit} bytes")
        if not generation:
            # Without it a conditional write could not tell our version from a newer one.
            raise StorageError(f"cannot read {path}: the store did not say which version it sent")
        return data, generation

    def read_many(self, paths: list[str]) -> dict[str, bytes | Exception]:
        """Each object whole, ``READ_CONCURRENCY`` GETs at a time; a failure is returned in its place."""
        return self.read_many_soon(paths).result()

    def read_many_soon(self, paths: list[str]) -> Future[dict[str, bytes | Exception]]:
        """``read_many`` started now on the client's event loop thread."""

        async def fetch_all() -> dict[str, bytes | Exception]:
            gate = asyncio.Semaphore(READ_CONCURRENCY)

            async def fetch(path: str) -> bytes | Exception:
                location = parse_url(path)
                async with gate:
                    try:
                        _, body = await self._fs._call("GET", "b/{}/o/{}", location.bucket, location.key,
                                                       alt="media")
                        return body
                    except FileNotFoundError:
                        return FileNotFoundError(f"no such object: {path}")
                    except Exception as exc:
                        return StorageError(f"cannot read {path}: {safe_reason(exc)}")

            return dict(zip(paths, await asyncio.gather(*(fetch(p) for p in paths)), strict=True))

        return asyncio.run_coroutine_threadsafe(fetch_all(), self._fs.loop)

    def download(self, path: str, fd: int, *, size: int, etag: str, part_size: int = 8 << 20,
                 concurrency: int = 10) -> int:
        """Write the object into the open file ``fd`` and return the bytes written: ranged GETs of
        exactly generation ``etag``, so parts of two versions are never mixed (a replaced object
        fails the read instead)."""
        location = parse_url(path)
        starts = list(range(0, size, part_size)) or [0]

        async def fetch_all() -> int:
            gate = asyncio.Semaphore(max(1, concurrency))

            async def part(start: int) -> int:
                params = {"alt": "media"}
                if etag:
                    params["generation"] = etag
                headers = {"Range": f"bytes={start}-{min(start + part_size, size) - 1}"} if size > part_size else None
                async with gate:
                    _, data = await self._fs._call("GET", "b/{}/o/{}", location.bucket, location.key,
                                                   headers=headers, **params)
                await asyncio.to_thread(os.pwrite, fd, data, start)
                return len(data)

            return sum(await asyncio.gather(*(part(s) for s in starts)))

        try:
            written = self._run(fetch_all())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {path}: {safe_reason(exc)}") from None
        if written != size:
            raise StorageError(f"cannot read {path}: {written} bytes arrived, the listing said {size}")
        return written

    def head(self, path: str) -> Entry | None:
        """The object's entry (size, generation, last modified), or None when there is none."""
        location = parse_url(path)
        try:
            item = self._run(self._fs._call("GET", "b/{}/o/{}", location.bucket, location.key, json_out=True))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(f"cannot head object {path}: {safe_reason(exc)}") from None
        base = location.key.rsplit("/", 1)[-1]
        return Entry(base, path, int(item.get("size") or 0), _mtime_ns(item), str(item.get("generation") or ""))

    def put_bytes(self, path: str, data: bytes, *, if_match: str | None = None,
                  if_absent: bool = False) -> str:
        """Write the whole object in one upload and return its new generation.

        ``if_match`` (a generation) writes only if the object still is that generation;
        ``if_absent`` only if there is no object yet (generation 0). Either failing raises
        :class:`PreconditionFailed` and changes nothing: GCS checks and writes in one step.
        """
        location = parse_url(path)
        params: dict[str, object] = {"uploadType": "multipart"}
        if if_match:
            params["ifGenerationMatch"] = if_match.strip('"')
        if if_absent:
            params["ifGenerationMatch"] = "0"
        # A multipart upload (metadata, then the bytes) in one request: the form every GCS server
        # applies preconditions to.
        boundary = "=====checkpoint-dashboard-" + os.urandom(12).hex()
        body = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps({"name": location.key}).encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ])
        upload = f"{self._fs._location}/upload/storage/v1/b/{{}}/o"
        try:
            item = self._run(self._fs._call(
                "POST", upload, location.bucket, data=body, json_out=True,
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'}, **params))
        except FileExistsError:  # gcsfs's translation of 412 Precondition Failed
            raise PreconditionFailed(f"{path} changed since it was read") from None
        except Exception as exc:
            raise StorageError(f"cannot put object {path}: {safe_reason(exc)}") from None
        return str(item.get("generation") or "")

    def upload(self, local_path: str | os.PathLike[str], path: str) -> None:
        """Copy a local file to ``path`` (resumable upload for large files)."""
        location = parse_url(path)
        try:
            self._fs.put_file(os.fspath(local_path), f"{location.bucket}/{location.key}")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot write {path}: {safe_reason(exc)}") from None

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (GCS ``rewrite``) of ``source`` to ``target``."""
        src, dst = parse_url(source), parse_url(target)
        try:
            self._fs.copy(f"{src.bucket}/{src.key}", f"{dst.bucket}/{dst.key}")
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {source}") from None
        except Exception as exc:
            raise StorageError(f"cannot copy {source}: {safe_reason(exc)}") from None

    def delete_many(self, paths: list[str]) -> dict[str, str]:
        """Delete objects; return ``{path: reason}`` for those that could not be deleted. An object
        already gone counts as deleted."""

        async def delete_all() -> list[str | None]:
            gate = asyncio.Semaphore(DELETE_CONCURRENCY)

            async def delete(path: str) -> str | None:
                location = parse_url(path)
                async with gate:
                    try:
                        await self._fs._call("DELETE", "b/{}/o/{}", location.bucket, location.key)
                    except FileNotFoundError:
                        return None
                    except Exception as exc:
                        return f"cannot delete {path}: {safe_reason(exc)}"
                return None

            return await asyncio.gather(*(delete(p) for p in paths))

        reasons = self._run(delete_all())
        return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason}

    def presigned_url(self, path: str, *, expires: int = 300, filename: str | None = None) -> str:
        """A V4 signed GET URL valid ``expires`` seconds; needs credentials that can sign."""
        location = parse_url(path)
        kwargs: dict[str, object] = {}
        if filename:
            kwargs["response_disposition"] = f'attachment; filename="{filename}"'
        try:
            return self._fs.sign(f"{location.bucket}/{location.key}", expiration=expires, **kwargs)
        except Exception as exc:
            raise StorageError(
                f"cannot sign a URL for {path}: the Google credentials in use cannot sign "
                f"(a service account key is needed): {safe_reason(exc)}"
            ) from None

    def open(self, path: str) -> BinaryIO:
        """A streaming reader (ranged GETs as it is read)."""
        location = parse_url(path)
        try:
            return self._fs.open(f"{location.bucket}/{location.key}", "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {path}") from None
        except Exception as exc:
            raise StorageError(f"cannot open {path}: {safe_reason(exc)}") from None
