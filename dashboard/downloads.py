"""Serving an export's file: the one code path behind the page's download and the API's.

Downloads are by database id only, so that no request names a file: the path comes from the
``Export`` row, is resolved with symlinks and must sit under ``EXPORT_ROOT``; the file name is
chosen by the server.

Django's ``FileResponse`` streams a whole file (and under gunicorn hands it to ``sendfile``) but
knows nothing of HTTP ranges, which ``curl -C -`` and download managers use to resume. Ranges
are handled here (RFC 9110 §14):

- one range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) → ``206`` with exactly those bytes and a
  ``Content-Range``;
- a range that starts beyond the end, or one that cannot be a range (``bytes=9-2``) → ``416``
  with ``Content-Range: bytes */size``;
- several ranges (``bytes=0-1,5-6``) → ``200`` with the whole file: RFC 9110 lets a server ignore
  ``Range``, and multipart/byteranges buys nothing for one model file;
- another unit, or an ``If-Range`` that is not the current ETag → ``200`` with the whole file.

The ETag is the export's sha256 (what the freeze recorded); ``If-None-Match`` gets ``304``.
With ``DOWNLOAD_X_ACCEL_REDIRECT`` set, the checks are made here and nginx sends the bytes.

A SavedModel (a directory) downloads as one reproducible ``.tar`` that exists on no disk: its
bytes are produced from the directory as they are sent (``persistence.tarball``), a range by
seeking into the members it covers. nginx cannot send what is not a file, so these archives are
streamed by the application even with ``DOWNLOAD_X_ACCEL_REDIRECT`` set. A file that no longer
matches the listing the response started from ends the stream early (the client sees fewer
bytes than ``Content-Length``), never other bytes under the recorded ETag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseNotModified,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.utils.http import content_disposition_header, parse_etags

from dashboard import export_storage
from dashboard.models import Export
from persistence import exportstore, files, storage, tarball

CHUNK_BYTES = 1024 * 1024
_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class ExportUnavailable(Exception):
    """The export's file cannot be served; ``message`` says why for users, ``changed`` whether it
    is there but differs from what was verified (a re-check can clear that)."""

    def __init__(self, message: str, *, changed: bool = False):
        super().__init__(message)
        self.message = message
        self.changed = changed


def export_response(request: HttpRequest, export: Export) -> HttpResponse:
    """The response that serves ``export`` for ``request`` (whole, one range, 304 or 416).

    Raises ``PermissionDenied`` when the file resolves outside the export root and
    ``ExportUnavailable`` when it is missing, not a regular file, or changed since the freeze.
    A 416 has an empty body: callers that answer errors in a format of their own replace it.
    """
    if export.in_bucket:
        return _object_response(request, export)
    try:
        path = export.file_path()
    except files.PathOutsideRoots:
        raise PermissionDenied from None
    name = export.download_filename()
    if export.is_directory:
        handle, archive = None, _open_archive(export, path, name)
        info = archive
    else:
        handle, archive = _open_file(export, path, name), None
        info = os.fstat(handle.fileno())
    size = info.st_size
    changed = export.disk_change(info)
    if changed:
        _close(handle)
        # Not served: the file that was verified is not there any more, and its sha256 (our ETag) would lie.
        raise ExportUnavailable(f"The file of export #{export.pk} ({name}) changed on disk ({changed}). It is not "
                                "served until it is checked again from the export's page.", changed=True)
    etag = f'"{export.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-transform",
        "Content-Disposition": content_disposition_header(True, name),
    }
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        _close(handle)
        return _with_headers(HttpResponseNotModified(), headers)
    wanted = requested_range(request, size, etag)
    if wanted == "unsatisfiable":
        _close(handle)
        response = HttpResponse(status=416, content_type="text/plain")
        response["Content-Range"] = f"bytes */{size}"
        return _with_headers(response, headers)
    # nginx sends files: a directory's archive exists on no disk, so it is streamed from here below.
    if settings.DOWNLOAD_X_ACCEL_REDIRECT and handle is not None:
        handle.close()
        relative = Path(path).relative_to(files.resolve(settings.EXPORT_ROOT)).as_posix()
        response = HttpResponse(content_type="application/octet-stream")
        response["X-Accel-Redirect"] = settings.DOWNLOAD_X_ACCEL_REDIRECT + quote(relative)
        return _with_headers(response, headers)  # nginx answers the Range itself
    if wanted is None and handle is not None:
        response = FileResponse(handle, content_type="application/octet-stream")
        # gunicorn hands the file to sendfile(); servers that iterate it get 1 MB blocks, not 4 kB.
        response.block_size = CHUNK_BYTES
        return _with_headers(response, headers)
    start, end = wanted or (0, size - 1)
    length = end - start + 1
    content = archive.iter_bytes(start, length) if archive is not None else _file_part(handle, start, length)
    response = StreamingHttpResponse(content, status=200 if wanted is None else 206,
                                     content_type="application/octet-stream")
    if wanted is not None:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(length)
    return _with_headers(response, headers)


def _object_response(request: HttpRequest, export: Export) -> HttpResponse:
    """An export in a bucket: a redirect to a presigned URL, or its bytes streamed from here.

    Either way the objects are first compared with what was verified (size and ETag), so a
    replaced object is never handed out under the recorded sha256. A SavedModel's archive is
    made from several objects, so it is always streamed.
    """
    name = export.download_filename()
    try:
        url, changed = export_storage.check(export)
    except files.PathOutsideRoots:
        raise PermissionDenied from None
    except storage.StorageError as exc:
        raise ExportUnavailable(f"The objects of export #{export.pk} ({name}) cannot be read from the bucket "
                                f"now ({exc}). Try again later.") from None
    if changed == "missing":
        raise ExportUnavailable(f"The objects of export #{export.pk} ({name}) are missing from the bucket: they "
                                "were deleted or moved after the export. Freeze the checkpoint again.")
    if changed:
        raise ExportUnavailable(f"The objects of export #{export.pk} ({name}) changed in the bucket ({changed}). It "
                                "is not served until it is checked again from the export's page.", changed=True)
    etag = f'"{export.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-transform",
               "Content-Disposition": content_disposition_header(True, name)}
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        return _with_headers(HttpResponseNotModified(), headers)
    if settings.EXPORT_DOWNLOADS == "redirect" and not export.is_directory:
        try:
            signed = storage.storage_for(url).presigned_url(url, expires=settings.EXPORT_DOWNLOAD_URL_SECONDS,
                                                            filename=name)
        except storage.StorageError as exc:
            raise ExportUnavailable(f"Export #{export.pk} ({name}) cannot be offered for download now ({exc}).") from None
        response = HttpResponseRedirect(signed)
        # The signed URL expires: no cache may keep the redirect longer than that.
        response["Cache-Control"] = "private, no-store"
        return response
    archive = export_storage.archive(export, url) if export.is_directory else None
    size = archive.st_size if archive is not None else export.size_bytes
    wanted = requested_range(request, size, etag)
    if wanted == "unsatisfiable":
        response = HttpResponse(status=416, content_type="text/plain")
        response["Content-Range"] = f"bytes */{size}"
        return _with_headers(response, headers)
    start, end = wanted or (0, size - 1)
    length = max(0, end - start + 1)
    content = (archive.iter_bytes(start, length) if archive is not None
               else exportstore.read_object(storage.storage_for(url), url, start, length))
    response = StreamingHttpResponse(content, status=200 if wanted is None else 206,
                                     content_type="application/octet-stream")
    if wanted is not None:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(length)
    return _with_headers(response, headers)


def _open_file(export: Export, path: Path, name: str) -> BinaryIO:
    try:
        # The resolved path, not following a symlink swapped in since it was resolved, and only a
        # regular file: opening a FIFO would hold this worker until some writer came along.
        return open(files.open_regular_file(path), "rb")  # noqa: SIM115 - the response closes it
    except files.UnsafeFile:
        raise ExportUnavailable(f"The file of export #{export.pk} ({name}) is not a regular file. "
                                "Freeze the checkpoint again.") from None
    except OSError:
        raise ExportUnavailable(f"The file of export #{export.pk} ({name}) is missing on disk: it was deleted or "
                                "moved after the freeze. Freeze the checkpoint again.") from None


def _open_archive(export: Export, path: Path, name: str) -> tarball.ArchiveLayout:
    """The layout of a directory export's archive: listed now, its files opened as they are sent
    (none followed through a symbolic link, each checked against this listing)."""
    try:
        return tarball.archive_layout(path, top=Path(export.path).name)
    except tarball.ArchiveChanged as exc:
        raise ExportUnavailable(f"The directory of export #{export.pk} ({name}) cannot be served: {exc.strerror}. "
                                "Freeze the checkpoint again.") from None
    except OSError:
        raise ExportUnavailable(f"The directory of export #{export.pk} ({name}) is missing on disk: it was deleted "
                                "or moved after the export. Export the checkpoint again.") from None


def _close(handle: BinaryIO | None) -> None:
    if handle is not None:
        handle.close()


def _with_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for key, value in headers.items():
        response[key] = value
    return response


def requested_range(request: HttpRequest, size: int, etag: str) -> tuple[int, int] | str | None:
    """``(first, last)`` byte positions of a single satisfiable range, ``"unsatisfiable"``, or None
    for the whole file (no Range, a unit other than bytes, several ranges, a stale If-Range)."""
    header = request.headers.get("Range", "")
    unit, _, spec = header.partition("=")
    if not header or unit.strip().lower() != "bytes":
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None
    if "," in spec:
        return None
    match = _RANGE.match(spec)
    if not match or match.groups() == ("", ""):
        return "unsatisfiable"
    first, last = match.groups()
    if first == "":  # a suffix: the final N bytes
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        return "unsatisfiable"
    return start, end


def _file_part(handle: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """Stream ``length`` bytes from ``start``; the file is closed when the response is."""
    try:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()
