"""Runs, their checkpoint history and checkpoint details."""

from __future__ import annotations

import os
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from dashboard import access, artifacts, roots, summaries
from dashboard.changes import RECENT_JOBS, change_stamp
from dashboard.forms import RegisterRunForm
from dashboard.forms.artifacts import verify_output_choices
from dashboard.models import Checkpoint, Export, Job, MetricValue, Run
from dashboard.templatetags.dashboard import four_places
from dashboard.views.common import start_job
from dashboard.views.paging import FLOAT, INT, TEXT, TIME, Order, Page, paginate

HISTORY_PAGE_SIZE = 50
# Each sort ends with the id, so that ties (equal times, sizes) page exactly; each has its index
# (``Checkpoint.Meta.indexes``). Checkpoints without a step come last in either direction.
HISTORY_SORTS = {
    "step": Order("step", ("step", "saved_at", "id"), (INT, TIME, INT), nullable=True),
    "-step": Order("-step", ("step", "saved_at", "id"), (INT, TIME, INT), descending=True, nullable=True),
    "saved_at": Order("saved_at", ("saved_at", "id"), (TIME, INT)),
    "-saved_at": Order("-saved_at", ("saved_at", "id"), (TIME, INT), descending=True),
    "size": Order("size", ("size_bytes", "id"), (INT, INT)),
    "-size": Order("-size", ("size_bytes", "id"), (INT, INT), descending=True),
}
# ``?sort=metric:loss`` / ``?sort=-metric:loss``: the checkpoints that have a value for it, by it.
METRIC_SORT = "metric:"
CHART_MAX_POINTS = 500
RUNS_PAGE_SIZE = 100
# The run page reads the run's cached summary with the run itself: one query fewer per view.
RUNS_WITH_SUMMARY = Run.objects.select_related("summary")
RUNS_ORDER = Order("name", ("name",), (TEXT,))


def runs(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    # The counts come from each run's cached summary: no checkpoint row is read.
    rows = Run.objects.select_related("summary").order_by("name")
    page = paginate(rows, RUNS_ORDER, request.GET, RUNS_PAGE_SIZE, total=Run.objects.count)
    for run in page:
        # Not computed here for a run without one: a page of a hundred runs stays one query.
        run.stats = summaries.for_run(run, compute=False)
    return render(request, "dashboard/runs.html", {"runs": page, "page": page})


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
    candidates, truncated = roots.untracked_checkpoint_directories(Run.objects.values_list("directory", flat=True))
    return render(request, "dashboard/run_new.html", {
        "form": form, "roots": [*settings.CHECKPOINT_ROOTS, *settings.CHECKPOINT_OBJECT_ROOTS],
        "candidates": candidates, "candidates_truncated": truncated,
    })


def run_detail(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, runs=RUNS_WITH_SUMMARY)
    # A bucket run is not watched (there is no directory to watch): the page says how often the
    # worker's periodic rescan lists it instead.
    context = {**history_context(request, run), "scan_interval": int(settings.SCAN_INTERVAL_SECONDS)}
    return render(request, "dashboard/run_detail.html", context)


def history_context(request: HttpRequest, run: Run) -> dict:
    """What the run page shows (also what its live refresh re-renders): the page of history rows
    its query string asks for, the summary, recent jobs, and the change stamp they were read at."""
    summary = summaries.for_run(run)
    sort = request.GET.get("sort", "-step")
    bare = sort.removeprefix("-")
    sort_metric = bare.removeprefix(METRIC_SORT) if bare.startswith(METRIC_SORT) else ""
    if sort_metric and len(sort_metric) <= 255:
        page = _history_by_metric(run, sort, sort_metric, request)
    else:
        sort, sort_metric = (sort if sort in HISTORY_SORTS else "-step"), ""
        history = run.checkpoints.defer("variables", "files", "problems", "verification")
        # Only a run with step-less checkpoints costs the query of that second segment.
        page = paginate(history, HISTORY_SORTS[sort], request.GET, HISTORY_PAGE_SIZE,
                        null_rows=summary.stepless_count > 0)
    page.total = summary.checkpoint_count
    _mark_exported(page)
    names = sorted({name for c in page for name in (c.metrics or {})} - {sort_metric})
    metric_names = ([sort_metric] if sort_metric else []) + names[: 4 - bool(sort_metric)]
    checkpoint_url, pin_url = _url_maker("checkpoint", run), _url_maker("checkpoint-pin", run)
    for c in page:
        c.url, c.pin_url = checkpoint_url(c.pk), pin_url(c.pk)
        # (value as shown, the step it was logged at when that is not the checkpoint's own: event files)
        logged = c.metric_steps or {}
        values = [(c.metrics or {}).get(name) for name in metric_names]
        c.metric_values = [
            (None if value is None else four_places(value), logged[name] if logged.get(name, c.step) != c.step else None)
            for name, value in zip(metric_names, values, strict=True)
        ]
    newest, active_jobs, ended_jobs = _jobs_for_run_page(run, summary.on_disk_count)
    query = request.GET.copy()
    query.pop("since", None)
    return {
        "run": run, "page": page, "sort": sort, "sort_metric": sort_metric, "summary": summary,
        "recent_jobs": active_jobs, "ended_jobs": ended_jobs, "metric_names": metric_names,
        "page_path": run.get_absolute_url() + (f"?{query.urlencode()}" if query else ""),
        # The stamp the change endpoint computes: from the same summary and newest jobs.
        "stamp": change_stamp(run, summary.last_recorded, [(j.pk, j.status) for j in newest[:RECENT_JOBS]]),
    }


def _mark_exported(rows: Page) -> None:
    # One probe per shown row of the export table's checkpoint index. As an EXISTS beside the
    # slice, PostgreSQL plans it as a hash of the whole export table, read on every page view.
    exported = set(
        Export.objects.filter(checkpoint_id__in=[c.pk for c in rows]).values_list("checkpoint_id", flat=True)
    )
    for c in rows:
        c.has_export = c.pk in exported


def _url_maker(name: str, run: Run) -> Callable[[int], str]:
    """The URL named ``name`` of one of ``run``'s checkpoints, by primary key: ``reverse`` once per
    page instead of once or twice per row, which was a tenth of a history page's time."""
    marker = "9182736450"
    before, _, after = reverse(name, args=[run.name, int(marker)]).rpartition(marker)
    return lambda pk: f"{before}{pk}{after}"


def _history_by_metric(run: Run, sort: str, name: str, request: HttpRequest) -> Page:
    """The checkpoints with a value for metric ``name``, by it: read from ``MetricValue`` rows in
    the order of their index, each with its checkpoint (one query)."""
    order = Order(sort, ("value", "checkpoint_id"), (FLOAT, INT), descending=sort.startswith("-"))
    values = (
        MetricValue.objects.filter(run=run, name=name)
        .select_related("checkpoint")
        .defer("checkpoint__variables", "checkpoint__files", "checkpoint__problems", "checkpoint__verification")
    )
    page = paginate(values, order, request.GET, HISTORY_PAGE_SIZE)
    rows = []
    for value in page:
        value.checkpoint.run = run  # its links name the run: not one query per row for it
        rows.append(value.checkpoint)
    page.rows = rows
    return page


RUN_PAGE_ENDED_JOBS = 5


def _jobs_for_run_page(run: Run, checkpoints_on_disk: int) -> tuple[list[Job], list[Job], list[Job]]:
    """The newest jobs, those of them still queued or running (with their progress bars), and the
    few newest that ended.

    Only the newest ended scan is worth a mention, and not when it found nothing while the run
    has checkpoints now: "0 found" from before the trainer saved only misleads.
    """
    # One query: the newest jobs hold the running ones (jobs run in the order they were asked for).
    newest = list(run.jobs.defer("log", "traceback", "result", "params").order_by("-created_at")[:30])
    active = [job for job in newest if not job.is_ended][:10]
    ended, seen_scan = [], False
    for job in (job for job in newest if job.is_ended):
        if job.kind == Job.SCAN:
            stale = checkpoints_on_disk and job.status == Job.FINISHED and job.message.startswith("0 checkpoints")
            if seen_scan or stale:
                continue
            seen_scan = True
        ended.append(job)
        if len(ended) == RUN_PAGE_ENDED_JOBS:
            break
    return newest, active, ended


def run_chart(request: HttpRequest, name: str) -> JsonResponse:
    """Size and metrics at checkpoints, thinned to at most ``CHART_MAX_POINTS`` checkpoints spread
    evenly over the steps, and the full curves read from event files (``curves``: each already cut down to
    at most ``event_metrics.CHART_POINTS`` points when it was stored, so any length costs one query).

    Steps whose files are gone (pruned, rotated out, missing) stay on the metric curves, flagged in ``gone``:
    what training measured does not go away with the files. They have no size on disk (null).
    """
    run = access.get_run_for_user(request, name)
    summary = summaries.for_run(run)
    total = summary.checkpoint_count - summary.stepless_count
    rows = run.checkpoints.exclude(step=None)
    if total > CHART_MAX_POINTS:
        rows = Checkpoint.objects.filter(id__in=Checkpoint.objects.spread_by_step(run.pk, CHART_MAX_POINTS))
    points = list(rows.order_by("step").values_list("step", "size_bytes", "metrics", "status"))
    gone = [status in Checkpoint.GONE for *_, status in points]
    curves = {}
    for series in run.metric_series.only("tag", "count", "chart_steps", "chart_values"):
        steps, values = series.chart_points()
        curves[series.tag] = {"steps": steps, "values": values, "total": series.count}
    metric_names = sorted({k for _, _, m, _ in points for k, v in (m or {}).items() if isinstance(v, int | float)})
    return JsonResponse(
        {
            "steps": [p[0] for p in points],
            "size_bytes": [None if g else p[1] for p, g in zip(points, gone, strict=True)],
            "metrics": {n: [(p[2] or {}).get(n) for p in points] for n in metric_names},
            "gone": gone,
            "curves": curves,
            "total": total,
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
            "verify_outputs": verify_output_choices(checkpoint),
            "files_left": files_left,
            "bytes_left": sum(f["size"] for f in files_left or []),
            "exports": list(checkpoint.exports.all()),
            "metric_rows": _metric_rows(checkpoint),
            "meta_dependents": checkpoint.meta_dependents.count() if checkpoint.has_own_meta else 0,
            "jobs": list(checkpoint.jobs.order_by("-created_at")[:5]),
            "run_aliases": run_aliases,
            "aliases": [a.name for a in run_aliases if a.checkpoint_id == checkpoint.pk],
        },
    )


def _metric_rows(checkpoint: Checkpoint) -> list[tuple[str, object, str]]:
    """(name, value, where an event-file value was logged: "at step" / "from step N" / "")."""
    logged = checkpoint.metric_steps or {}
    return [
        (name, value, "" if name not in logged else "at step" if logged[name] == checkpoint.step
         else f"from step {logged[name]}")
        for name, value in (checkpoint.metrics or {}).items()
    ]
