"""Frozen exports: the list, one export's page, the download and the re-check.

The download itself (ranges, ETag, the checks at open time) is ``dashboard.downloads``, shared
with the REST API.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.core.cache import cache
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, downloads, rechecking
from dashboard.models import Alias, Checkpoint, Export, Run
from dashboard.views.paging import INT, TIME, Order, paginate
from persistence import files

logger = logging.getLogger(__name__)

EXPORTS_PAGE_SIZE = 50
RUNS_WITH_EXPORTS_CACHE_SECONDS = 3600
NEWEST_FIRST = Order("-created", ("created_at", "id"), (TIME, INT), descending=True)


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
    page = paginate(exports, NEWEST_FIRST, request.GET, EXPORTS_PAGE_SIZE, total=exports.count)
    runs = _runs_with_exports()
    alias_names = Alias.objects.order_by("name").values_list("name", flat=True).distinct()
    return render(request, "dashboard/export_list.html", {
        "page": page, "run_name": run_name, "runs": runs, "alias": alias, "aliases": list(alias_names),
        "kind": kind, "kinds": Export.KIND_CHOICES, "filtered": bool(run_name or alias or kind),
    })


def _runs_with_exports() -> list[str]:
    """The names of the runs that have exports (the run filter's choices), newest state only.

    Finding them means one lookup per exported checkpoint: thousands of index probes into the
    checkpoint table, which is most of this page's time on a large deployment. They are cached
    under the export table's row count, newest id and newest creation time, read with one
    aggregate over indexes: an export added or deleted (a run deleted with its exports included)
    changes one of them, and an export never moves to another checkpoint. Without the cache (Redis
    down) they are looked up.
    """
    stamp = Export.objects.aggregate(n=Count("id"), newest=Max("id"), at=Max("created_at"))
    at = stamp["at"].isoformat() if stamp["at"] else ""
    key = f"export-list-runs:{stamp['n']}:{stamp['newest']}:{at}"
    try:
        names = cache.get(key)
    except Exception:  # a cache outage must not take the page down with it
        logger.warning("cache unreachable; looking up the runs with exports", exc_info=True)
        names = None
    if names is None:
        # From the exports (thousands), not from the runs' checkpoints (millions): given the joined
        # form, PostgreSQL walked the checkpoint table's primary key across every run.
        exported = list(Export.objects.order_by().values_list("checkpoint_id", flat=True).distinct())
        run_ids = set(Checkpoint.objects.filter(pk__in=exported).order_by().values_list("run_id", flat=True))
        names = list(Run.objects.filter(pk__in=run_ids).order_by("name").values_list("name", flat=True))
        try:
            cache.set(key, names, timeout=RUNS_WITH_EXPORTS_CACHE_SECONDS)
        except Exception:
            logger.warning("cache unreachable; runs with exports not kept", exc_info=True)
    return names


def export_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run", "created_by"), pk=pk)
    return render(request, "dashboard/export_detail.html",
                  {"export": export, "run": export.checkpoint.run, "disk_change": export.disk_change()})


def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run"), pk=pk)
    try:
        return downloads.export_response(request, export)
    except downloads.ExportUnavailable as exc:
        if exc.changed:
            return render(request, "dashboard/export_changed.html", {"message": exc.message, "export": export},
                          status=404)
        return render(request, "404.html", {"message": exc.message}, status=404)


@require_POST
def export_recheck(request: HttpRequest, pk: int) -> HttpResponse:
    """Hash a changed export again: byte for byte what was verified, it is served again."""
    access.require(request, access.OPERATE)
    export = get_object_or_404(Export.objects.select_related("checkpoint__run"), pk=pk)
    try:
        whole = rechecking.recheck_export(export, actor=request.user)
    except (OSError, files.PathOutsideRoots):
        messages.error(request, "The export's file is missing or is not a regular file: freeze the checkpoint again.")
        return redirect(export)
    if whole:
        messages.success(request, "The file is byte for byte the verified export; it is served again.")
    else:
        messages.error(request, "The file's contents differ from the verified export: freeze the checkpoint again.")
    return redirect(export)
