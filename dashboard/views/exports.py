"""Frozen exports: the list, one export's page, and the download.

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
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseNotModified,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header, parse_etags
from django.views.decorators.http import require_POST

from dashboard import access, artifacts
from dashboard.models import Alias, Export, Run
from persistence import files

EXPORTS_PAGE_SIZE = 50
CHUNK_BYTES = 1024 * 1024
_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def export_list(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    run_name, alias, kind = request.GET.get("run", ""), request.GET.get("alias", ""), request.GET.get("kind", "")
    exports = Export.objects.select_related("checkpoint__run", "created_by").order_by("-created_at")
    if run_name:
        exports = exports.filter(checkpoint__run__name=run_name)
    if alias:
        # The exports of whatever checkpoint the alias points at now (of every run that has one).
        exports = exports.filter(checkpoint__aliases__name=alias)
    if kind in Export.SUFFIXES:
        exports = exports.filter(kind=kind)
    page = Paginator(exports, EXPORTS_PAGE_SIZE).get_page(request.GET.get("page"))
    runs = Run.objects.filter(checkpoints__exports__isnull=False).distinct().values_list("name", flat=True)
    alias_names = Alias.objects.order_by("name").values_list("name", flat=True).distinct()
    return render(request, "dashboard/export_list.html", {
        "page": page, "run_name": run_name, "runs": list(runs), "alias": alias, "aliases": list(alias_names),
        "kind": kind, "kinds": Export.KIND_CHOICES, "filtered": bool(run_name or alias or kind),
    })


def export_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run", "created_by"), pk=pk)
    return render(request, "dashboard/export_detail.html",
                  {"export": export, "run": export.checkpoint.run, "disk_change": export.disk_change()})


def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run"), pk=pk)
    try:
        path = export.file_path()
    except files.PathOutsideRoots:
        raise PermissionDenied from None
    try:
        # The resolved path, not following a symlink swapped in since it was resolved, and only a
        # regular file: opening a FIFO would hold this worker until some writer came along.
        handle = open(files.open_regular_file(path), "rb")  # noqa: SIM115 - the response closes it
    except files.UnsafeFile:
        return _missing(request, export, "is not a regular file")
    except OSError:
        return _missing(request, export, "is missing on disk: it was deleted or moved after the freeze")
    info = os.fstat(handle.fileno())
    size = info.st_size
    changed = export.disk_change(info)
    if changed:
        handle.close()
        return _changed(request, export, changed)
    etag = f'"{export.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-transform",
        "Content-Disposition": content_disposition_header(True, export.download_filename()),
    }
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        handle.close()
        return _with_headers(HttpResponseNotModified(), headers)
    wanted = _requested_range(request, size, etag)
    if wanted == "unsatisfiable":
        handle.close()
        response = HttpResponse(status=416, content_type="text/plain")
        response["Content-Range"] = f"bytes */{size}"
        return _with_headers(response, headers)
    if settings.DOWNLOAD_X_ACCEL_REDIRECT:
        handle.close()
        relative = Path(path).relative_to(files.resolve(settings.EXPORT_ROOT)).as_posix()
        response = HttpResponse(content_type="application/octet-stream")
        response["X-Accel-Redirect"] = settings.DOWNLOAD_X_ACCEL_REDIRECT + quote(relative)
        return _with_headers(response, headers)  # nginx answers the Range itself
    if wanted is None:
        response = FileResponse(handle, content_type="application/octet-stream")
        # gunicorn hands the file to sendfile(); servers that iterate it get 1 MB blocks, not 4 kB.
        response.block_size = CHUNK_BYTES
        return _with_headers(response, headers)
    start, end = wanted
    response = StreamingHttpResponse(_file_part(handle, start, end - start + 1), status=206,
                                     content_type="application/octet-stream")
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(end - start + 1)
    return _with_headers(response, headers)


def _changed(request: HttpRequest, export: Export, what: str) -> HttpResponse:
    # Not found: the file that was verified is not there any more, and its sha256 (our ETag) would lie.
    message = (f"The file of export #{export.pk} ({export.download_filename()}) changed on disk ({what}). "
               "It is not served until it is checked again from the export's page.")
    return render(request, "dashboard/export_changed.html", {"message": message, "export": export}, status=404)


@require_POST
def export_recheck(request: HttpRequest, pk: int) -> HttpResponse:
    """Hash a changed export again: byte for byte what was verified, it is served again."""
    access.require(request, access.OPERATE)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run"), pk=pk)
    try:
        whole = artifacts.recheck_export(export, actor=request.user)
    except (OSError, files.PathOutsideRoots):
        messages.error(request, "The export's file is missing or is not a regular file: freeze the checkpoint again.")
        return redirect(export)
    if whole:
        messages.success(request, "The file is byte for byte the verified export; it is served again.")
    else:
        messages.error(request, "The file's contents differ from the verified export: freeze the checkpoint again.")
    return redirect(export)


def _missing(request: HttpRequest, export: Export, what: str) -> HttpResponse:
    message = f"The file of export #{export.pk} ({export.download_filename()}) {what}. Freeze the checkpoint again."
    return render(request, "404.html", {"message": message}, status=404)


def _with_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for key, value in headers.items():
        response[key] = value
    return response


def _requested_range(request: HttpRequest, size: int, etag: str) -> tuple[int, int] | str | None:
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


def _file_part(handle, start: int, length: int):
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
