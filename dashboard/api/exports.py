"""Exports: list (newest step first), one export, and its download."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Query, Router

from dashboard import access, downloads
from dashboard.models import Export
from dashboard.representations import export_item

from .pagination import DEFAULT_LIMIT, MAX_LIMIT, Key, Ordering, paginate
from .problems import ApiProblem
from .schemas import ExportOut, ExportPage

router = Router(tags=["exports"])

# Newest step first and, for several exports of one step, the newest export first.
NEWEST_STEP = Ordering("-step", [Key("checkpoint__step", descending=True, nullable=True),
                                 Key("id", descending=True)])


@router.get("/exports", response=ExportPage, summary="Frozen exports, newest step first")
def list_exports(request: HttpRequest, run: str | None = Query(None, max_length=100), verified: bool | None = None,
                 min_step: int | None = None, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                 cursor: str | None = None):
    """`?run=NAME&verified=true&limit=1` is the newest verified export of a run."""
    access.require(request, access.VIEW)
    # Only what ``export_item`` reads: a checkpoint row holds its whole variable list.
    rows = Export.objects.select_related("checkpoint__run").only(
        "id", "kind", "outputs", "sha256", "size_bytes", "verified", "max_abs_diff", "created_at",
        "checkpoint__step", "checkpoint__run__name")
    if run is not None:
        rows = rows.filter(checkpoint__run__name=run)
    if verified is not None:
        rows = rows.filter(verified=verified)
    if min_step is not None:
        rows = rows.filter(checkpoint__step__gte=min_step)
    return paginate(rows, NEWEST_STEP, limit, cursor, export_item)


def _export(request: HttpRequest, pk: int) -> Export:
    access.require(request, access.VIEW)
    return get_object_or_404(Export.objects.select_related("checkpoint__run"), pk=pk)


@router.get("/exports/{id}", response=ExportOut, summary="One export")
def get_export(request: HttpRequest, id: int):
    return export_item(_export(request, id))


@router.get("/exports/{id}/download", summary="The .pb file (Range, If-Range, ETag = sha256)",
            response={200: bytes, 206: bytes, 304: None, 404: None, 416: None},
            openapi_extra={"responses": {
                200: {"description": "The whole file", "content": {"application/octet-stream": {}}},
                206: {"description": "One byte range (`Range: bytes=a-b`)",
                      "content": {"application/octet-stream": {}}},
                302: {"description": "An export in a bucket with `EXPORT_DOWNLOADS=redirect`: a short-lived "
                             "presigned URL of the object"},
                304: {"description": "`If-None-Match` matched the ETag (the export's sha256)"},
                404: {"description": "No such export, or its file is missing or changed on disk",
                      "content": {"application/problem+json": {}}},
                416: {"description": "The range is outside the file", "content": {"application/problem+json": {}}},
            }})
def download_export(request: HttpRequest, id: int) -> HttpResponse:
    """The same responses as the dashboard's download button: resume with `Range` (and `If-Range`
    with the ETag, so that a changed file is sent whole), check the bytes against `sha256`."""
    export = _export(request, id)
    try:
        return downloads.export_response(request, export)
    except downloads.ExportUnavailable as exc:
        raise ApiProblem(404, exc.message, kind="export-changed" if exc.changed else "export-missing") from None
