"""The run page keeping itself current: a change stamp it polls, and the parts it re-renders.

The page asks ``changes/?since=STAMP`` every second (two small indexed queries besides the run
itself); only when the stamp moved does it fetch ``live/`` (the summary and history partials, as
the full page renders them) and re-fetch its chart data. What moves the stamp:

- a scan of the run (the watcher's, the periodic one, a scan job): ``Run.last_scanned_at``; this
  covers new rows, rows rotated out or missing, latest flags, and "scanned N s ago";
- a checkpoint recorded outside a scan (a save job records each one as it is written): the
  newest ``recorded_at`` among checkpoints on disk (kept in the run's ``RunSummary``, written with the rows);
- a job of the run queued, started or ended (prunes, verifies, freezes change rows and badges):
  the ids and statuses of the five newest jobs, which the page lists.

The stamp itself is computed in ``dashboard/changes.py``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard import access
from dashboard.changes import current_stamp
from dashboard.views.runs import RUNS_WITH_SUMMARY, history_context


@require_GET
def run_changes(request: HttpRequest, name: str) -> HttpResponse:
    """204 while the stamp is still ``since``; else ``{"stamp": ...}`` (never cached)."""
    run = access.get_run_for_user(request, name)
    stamp = current_stamp(run)
    if request.GET.get("since") == stamp:
        response = HttpResponse(status=204)
    else:
        response = JsonResponse({"stamp": stamp})
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def run_live(request: HttpRequest, name: str) -> HttpResponse:
    """The run page's summary and history partials for the same query string (page, sort)."""
    run = access.get_run_for_user(request, name, runs=RUNS_WITH_SUMMARY)
    response = render(request, "dashboard/partials/run_live.html", history_context(request, run))
    response["Cache-Control"] = "no-store"
    return response
