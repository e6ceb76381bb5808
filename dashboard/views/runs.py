"""Runs, their checkpoint history and checkpoint details."""

from __future__ import annotations

import os

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Exists, Max, OuterRef, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, artifacts
from dashboard.forms import RegisterRunForm
from dashboard.models import Checkpoint, Export, Job, Run
from dashboard.views.common import start_job

HISTORY_PAGE_SIZE = 50
HISTORY_SORTS = {
    "step": ("step", "saved_at"),
    "-step": ("-step", "-saved_at"),
    "saved_at": ("saved_at", "step"),
    "-saved_at": ("-saved_at", "-step"),
    "size": ("size_bytes", "step"),
    "-size": ("-size_bytes", "-step"),
}
CHART_MAX_POINTS = 500


def runs(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    on_disk = ~Q(checkpoints__status__in=[Checkpoint.PRUNED, Checkpoint.MISSING])
    rows = Run.objects.annotate(
        checkpoint_count=Count("checkpoints", filter=on_disk),
        latest_step=Max("checkpoints__step", filter=on_disk),
        total_bytes=Sum("checkpoints__size_bytes", filter=on_disk),
        last_activity=Max("checkpoints__saved_at"),
    ).order_by("name")
    return render(request, "dashboard/runs.html", {"runs": rows})


def run_new(request: HttpRequest) -> HttpResponse:
    access.require(request, access.OPERATE)
    form = RegisterRunForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        run = form.save(commit=False)
        run.created_by = request.user
        run.save()
        start_job(request, Job.SCAN, run=run)
        messages.success(request, f"Run “{run.name}” registered; its first scan has started.")
        return redirect(run)
    return render(request, "dashboard/run_new.html", {"form": form})


def run_detail(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name)
    sort = request.GET.get("sort", "-step")
    if sort not in HISTORY_SORTS:
        sort = "-step"
    history = (
        run.checkpoints.defer("variables", "files", "problems", "verification")
        .annotate(has_export=Exists(Export.objects.filter(checkpoint=OuterRef("pk"))))
        .order_by(*HISTORY_SORTS[sort])
    )
    page = Paginator(history, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    metric_names = sorted({name for c in page for name in (c.metrics or {})})[:4]
    for c in page:
        c.metric_values = [(c.metrics or {}).get(name) for name in metric_names]
    summary = run.checkpoints.on_disk().aggregate(
        count=Count("id"), total_bytes=Sum("size_bytes"), latest_step=Max("step")
    )
    recent_jobs = list(run.jobs.order_by("-created_at")[:5])
    return render(
        request,
        "dashboard/run_detail.html",
        {
            "run": run, "page": page, "sort": sort, "summary": summary, "recent_jobs": recent_jobs,
            "metric_names": metric_names,
        },
    )


def run_chart(request: HttpRequest, name: str) -> JsonResponse:
    """Size and metrics over steps, thinned to at most ``CHART_MAX_POINTS`` evenly spaced points.

    Steps whose files are gone (pruned, missing) stay on the metric curves, flagged in ``gone``:
    what training measured does not go away with the files. They have no size on disk (null).
    """
    run = access.get_run_for_user(request, name)
    ids = list(run.checkpoints.exclude(step=None).order_by("step").values_list("id", flat=True))
    stride = max(1, -(-len(ids) // CHART_MAX_POINTS))
    chosen = ids[::stride]
    if ids and chosen[-1] != ids[-1]:
        chosen.append(ids[-1])
    points = list(
        Checkpoint.objects.filter(id__in=chosen).order_by("step").values_list("step", "size_bytes", "metrics", "status")
    )
    gone = [status in (Checkpoint.PRUNED, Checkpoint.MISSING) for *_, status in points]
    metric_names = sorted({k for _, _, m, _ in points for k, v in (m or {}).items() if isinstance(v, int | float)})
    return JsonResponse(
        {
            "steps": [p[0] for p in points],
            "size_bytes": [None if g else p[1] for p, g in zip(points, gone, strict=True)],
            "metrics": {n: [(p[2] or {}).get(n) for p in points] for n in metric_names},
            "gone": gone,
            "total": len(ids),
            "shown": len(points),
        }
    )


@require_POST
def run_scan(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.OPERATE)
    if start_job(request, Job.SCAN, run=run):
        messages.success(request, "Scan started.")
    return redirect(run)


@require_POST
def run_trust(request: HttpRequest, name: str) -> HttpResponse:
    """Maintainers decide whether this run's graphs may use file-system or Python ops."""
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    artifacts.set_trusted(run, request.POST.get("trusted") == "1", actor=request.user)
    messages.success(
        request,
        "Graphs of this run may now use file-system and Python ops when restored or frozen."
        if run.trusted else "Graphs of this run are checked for file-system and Python ops again.",
    )
    return redirect(run)


def checkpoint_detail(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    run = access.get_run_for_user(request, name)
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("meta_source", "source"), run=run, pk=pk)
    files_left = None
    if not checkpoint.on_disk:
        # The row keeps what was recorded; the page says what is really left (often a .meta that
        # later checkpoints restore with). Base names only, looked up inside the run directory.
        files_left = [
            f for f in checkpoint.files or []
            if os.path.lexists(os.path.join(run.directory, os.path.basename(f["name"])))
        ]
    run_aliases = list(run.aliases.select_related("checkpoint"))
    return render(
        request,
        "dashboard/checkpoint_detail.html",
        {
            "run": run,
            "checkpoint": checkpoint,
            "files_left": files_left,
            "bytes_left": sum(f["size"] for f in files_left or []),
            "exports": list(checkpoint.exports.all()),
            "meta_dependents": checkpoint.meta_dependents.count() if checkpoint.has_own_meta else 0,
            "jobs": list(checkpoint.jobs.order_by("-created_at")[:5]),
            "run_aliases": run_aliases,
            "aliases": [a.name for a in run_aliases if a.checkpoint_id == checkpoint.pk],
        },
    )
