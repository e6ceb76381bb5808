"""Retention: a run's policy, the prune preview and "Prune now", pins, and the audit log.

Planning is pure Python (``persistence.retention``) and runs here, in the web process; deleting
runs in a prune job, which plans again and refuses unless it arrives at the previewed plan.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.db.models import Count, Max, Q, Subquery, Sum
from django.db.models.fields.json import KT
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from dashboard import access, pruning, retention, trash
from dashboard.forms import PinForm, RetentionPolicyForm, unrecorded_metric_warning
from dashboard.models import AuditEvent, Checkpoint, Export, Job, Run
from dashboard.views.common import start_job
from dashboard.views.paging import INT, TIME, Order, count_at_most, paginate
from dashboard.views.plan_pages import PLAN_PAGE_SIZE, PlanRows, plan_page
from persistence.retention import by_step, decision_key, decision_key_by_time

logger = logging.getLogger(__name__)

AUDIT_PAGE_SIZE = 50
AUDIT_COUNT_CAP = 10_000
# Newest first, read from the (at, id), (run, at, id) or (action, at, id) index.
AUDIT_ORDER = Order("-at", ("at", "id"), (TIME, INT), descending=True)
TIMELINE_MAX_POINTS = 1500  # per series; a run of 100,000 checkpoints still draws at once
SHOW_CHOICES = ("all", "delete", "keep")


def retention_policy(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name)
    if request.method == "POST":
        access.require(request, access.MAINTAIN)
    form = RetentionPolicyForm.for_run(
        run, request.POST if request.method == "POST" else None, metric_names=_metric_names(run)
    )
    if request.method == "POST" and form.is_valid():
        changes = retention.update_retention(run, form.cleaned_data, actor=request.user)
        messages.success(request, "Retention policy saved; this is what it would prune." if changes else "Nothing changed.")
        # A rule that keeps nothing (best-N by a metric never recorded) is saved as asked; the
        # preview this leads to says so next to the plan.
        return redirect("run-prune", run.name)
    return render(request, "dashboard/retention_policy.html", {"run": run, "form": form})


def prune_preview(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name)
    show = request.GET.get("show") if request.GET.get("show") in SHOW_CHOICES else "all"
    try:
        plan, shown, timeline = _cached_preview(run, show)
    except ValueError as exc:
        return render(request, "dashboard/prune_preview.html",
                      {"run": run, "policy_error": str(exc), **_trash_context(run)})
    policy = retention.retention_policy(run)
    return render(
        request,
        "dashboard/prune_preview.html",
        {
            "run": run, "plan": plan, "policy": policy, "show": show,
            "policy_warnings": _policy_warnings(run, policy),
            "page": plan_page(shown, show, request.GET),
            "timeline": timeline, "running": pruning.running_prune(run),
            "recent_prunes": list(run.jobs.filter(kind=Job.PRUNE).order_by("-created_at")[:3]),
            **_trash_context(run),
        },
    )


def _trash_context(run: Run) -> dict:
    batches, problem = trash.batches(run)
    return {"trash_batches": batches, "trash_problem": problem, "trash_days": settings.TRASH_DAYS}


@require_POST
def trash_restore(request: HttpRequest, name: str, batch: str) -> HttpResponse:
    """Move a prune's trash batch back into the run, then scan it so that its rows are present again."""
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    try:
        result = trash.restore(run, batch, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("run-prune", run.name)
    restored = len(result.restored)
    messages.success(request, f"Restored {restored} file{_plural(restored)} from the trash ({batch}). "
                              "The state file was not rewritten: TensorFlow's latest checkpoint is unchanged.")
    for file_name, why in sorted({**result.refused, **result.failed}.items())[:10]:
        messages.warning(request, f"{file_name}: {why}")
    if restored and start_job(request, Job.SCAN, run=run):
        messages.info(request, "A scan is recording the restored checkpoints.")
    return redirect("run-prune", run.name)


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


@require_POST
def prune_now(request: HttpRequest, name: str) -> HttpResponse:
    """Start a prune job that executes exactly the previewed plan (the form carries its fingerprint)."""
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    running = pruning.running_prune(run)
    if running is not None:
        messages.warning(request, f"A prune of this run is already running (job #{running.pk}).")
        return redirect(running)
    try:
        plan = retention.plan_retention(run)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("run-prune", run.name)
    if plan.fingerprint != request.POST.get("fingerprint"):
        messages.warning(request, "The run changed since the preview — preview again.")
        return redirect("run-prune", run.name)
    if not plan.files_to_delete:
        messages.info(request, "This plan deletes nothing.")
        return redirect("run-prune", run.name)
    params = {"fingerprint": plan.fingerprint, "policy": asdict(retention.retention_policy(run))}
    job = start_job(request, Job.PRUNE, run=run, params=params)
    if job is None:
        return redirect("run-prune", run.name)
    messages.success(request, f"Prune started: {plan.deleted_count} checkpoint(s) to delete.")
    return redirect(job)


@require_POST
def checkpoint_pin(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    checkpoint = get_object_or_404(Checkpoint, run=run, pk=pk)
    checkpoint.run = run
    form = PinForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
    else:
        reason, pin = form.cleaned_data["reason"], form.cleaned_data["action"] == "pin"
        try:
            if pin:
                pruning.pin(checkpoint, reason, actor=request.user)
            else:
                pruning.unpin(checkpoint, reason, actor=request.user)
        except ValueError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{'Pinned' if pin else 'Unpinned'} {checkpoint.prefix}.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = checkpoint.get_absolute_url()
    return redirect(target)


def audit(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    filters = {k: request.GET.get(k, "").strip() for k in ("run", "action")}
    # Details (a whole plan for a prune) stay in the database; the list needs only the job's id.
    events = AuditEvent.objects.select_related("actor", "run", "checkpoint").defer("details").annotate(
        job_id=KT("details__job")
    )
    if filters["run"]:
        # The run's id as a scalar subquery, not a join: joined, PostgreSQL sorts the run's whole
        # log instead of reading its page from the (run, at, id) index.
        events = events.filter(run=Subquery(Run.objects.filter(name=filters["run"]).values("pk")[:1]))
    if filters["action"]:
        events = events.filter(action=filters["action"])
    page = paginate(events, AUDIT_ORDER, request.GET, AUDIT_PAGE_SIZE,
                    total=count_at_most(events, AUDIT_COUNT_CAP), total_cap=AUDIT_COUNT_CAP)
    return render(
        request,
        "dashboard/audit.html",
        {
            "page": page, "filters": filters,
            "run_names": list(Run.objects.order_by("name").values_list("name", flat=True)),
            "actions": AuditEvent.actions(),
        },
    )


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class PlanSummary:
    """What the preview page shows of a plan besides its rows (all a cache entry needs to hold)."""

    fingerprint: str
    kept_count: int
    deleted_count: int
    bytes_freed: int
    files_to_delete: list[str]
    decision_count: int


def _cached_preview(run: Run, show: str) -> tuple:
    """The plan's summary, the rows ``show`` selects (``PlanRows``, read a page at a time) and the timeline,
    computed once per state of the run.

    Planning a run of 20,000 checkpoints costs seconds of web CPU; every reload and every other
    viewer would pay it again. The result is kept in the shared cache under a stamp of everything
    the plan reads (``_plan_stamp``) and reused until that changes or until the first young
    checkpoint grows older than ``min_age`` (the one input that is the clock). A view reads the
    summary and one page of rows: unpickling all 20,000 rows took longer than the page. "Prune
    now" always plans afresh and compares fingerprints, so a stale entry is never executed. When
    the cache (Redis) is unreachable the plan is computed as before.
    """
    stamp = _plan_stamp(run)
    key = f"prune-plan:{run.pk}:{stamp}"  # rows with their sort key (older entries have none)
    try:
        entry = cache.get(key)
    except Exception:  # a cache outage must not take the page down with it
        logger.warning("prune preview cache unreachable; planning without it", exc_info=True)
        entry = None
    now = time.time()

    def plan_now() -> tuple:
        facts = retention.retention_facts(run)
        plan = retention.plan_retention(run, facts=facts, now=now)
        rows = _plan_rows(run, plan, facts)
        return facts, plan, rows

    if entry is not None and now < entry["valid_until"]:
        rows = PlanRows(stamp, entry["counts"][show], chunk_key=f"{key}:{show}", starts=entry["starts"][show],
                        load=lambda r: dict(zip(_ROW_KEYS, r, strict=True)),
                        fallback=lambda: _shown(plan_now()[2], show))
        return entry["summary"], rows, entry["timeline"]
    facts, plan, rows = plan_now()
    summary = PlanSummary(
        fingerprint=plan.fingerprint, kept_count=plan.kept_count, deleted_count=plan.deleted_count,
        bytes_freed=plan.bytes_freed, files_to_delete=list(plan.files_to_delete), decision_count=len(plan.decisions),
    )
    timeline = _timeline(rows)
    by_show = {choice: _shown(rows, choice) for choice in SHOW_CHOICES}
    entries = {
        f"{key}:{choice}:{i // PLAN_PAGE_SIZE}": [tuple(r[k] for k in _ROW_KEYS) for r in shown[i:i + PLAN_PAGE_SIZE]]
        for choice, shown in by_show.items() for i in range(0, len(shown), PLAN_PAGE_SIZE)
    }
    # The summary last: a reader who finds it finds the pages too. ``starts`` (each chunk's first
    # key) lets a cursor of an older plan find its place in this one.
    entries[key] = {
        "summary": summary, "timeline": timeline, "counts": {c: len(v) for c, v in by_show.items()},
        "starts": {c: [r["key"] for r in v[::PLAN_PAGE_SIZE]] for c, v in by_show.items()},
        "valid_until": _plan_valid_until(facts, retention.retention_policy(run).min_age_seconds, now),
    }
    try:
        cache.set_many(entries, timeout=PREVIEW_CACHE_SECONDS)
    except Exception:
        logger.warning("prune preview cache unreachable; plan not kept", exc_info=True)
    return summary, PlanRows(stamp, len(by_show[show]), rows=by_show[show]), timeline


def _shown(rows: list[dict], show: str) -> list[dict]:
    return [r for r in rows if show == "all" or (r["keep"] == (show == "keep"))]


PREVIEW_CACHE_SECONDS = 3600
_ROW_KEYS = ("id", "prefix", "step", "status", "saved_at", "size", "keep", "meta_only", "reasons", "bytes", "files",
             "key")


def _plan_stamp(run: Run) -> str:
    """A digest of what a plan depends on, from three aggregate queries (no row is read).

    The policy, the state-file view and the directory change token come from the run row; the
    checkpoint rows are summarised per status and for pins (a count and a sum of ids each, so
    that moving a pin or a status from one row to another changes the stamp); exports and the
    run's audit trail (pins, prunes, "make latest", policy edits are all audited) by count and
    newest id.
    """
    statuses = [s for s, _ in Checkpoint.STATUS_CHOICES]
    rows = run.checkpoints.aggregate(
        # Aggregate names must not be field names ("pinned"), hence the prefix.
        stamp_n=Count("id"), stamp_max_id=Max("id"), stamp_recorded=Max("recorded_at"),
        stamp_size=Sum("size_bytes"), stamp_pinned_n=Count("id", filter=Q(pinned=True)),
        stamp_pinned_ids=Sum("id", filter=Q(pinned=True)),
        **{f"stamp_{s}_n": Count("id", filter=Q(status=s)) for s in statuses},
        **{f"stamp_{s}_ids": Sum("id", filter=Q(status=s)) for s in statuses},
    )
    exports = Export.objects.filter(checkpoint__run=run).aggregate(n=Count("id"), max_id=Max("id"))
    audited = run.audit_events.aggregate(max_id=Max("id"))
    state = {
        "policy": retention.retention_values(run), "latest": run.latest_prefix,
        "preserved": run.last_preserved_timestamp, "state_files": run.state_files,
        "directory": run.directory, "directory_stamp": run.directory_stamp,
        "rows": rows, "exports": exports, "audit": audited,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _plan_valid_until(facts: list, min_age_seconds: int | None, now: float) -> float:
    """When the oldest checkpoint still protected by ``min_age`` stops being protected: the plan
    made at ``now`` stays the plan until then (nothing else in it depends on the clock)."""
    if not min_age_seconds:
        return float("inf")
    young = [f.saved_at + min_age_seconds for f in facts if now - f.saved_at < min_age_seconds]
    return min(young, default=float("inf"))


def _metric_names(run: Run) -> list[str]:
    # The newest checkpoints say which metrics training records; enough for the form's suggestions.
    recent = run.checkpoints.order_by("-saved_at").values_list("metrics", flat=True)[:200]
    return sorted({name for metrics in recent for name in (metrics or {})})


def _policy_warnings(run: Run, policy) -> list[str]:
    """Rules of the policy that keep nothing for this run although they look meant to.

    Two indexed queries rather than the whole plan's facts: the preview itself comes from the cache.
    """
    metric = policy.best_metric
    if not policy.keep_best_n or not metric or run.checkpoints.filter(metrics__has_key=metric).exists():
        return []
    recorded = sorted({key for m in run.checkpoints.order_by("-id").values_list("metrics", flat=True)[:200]
                       for key in (m or {})})
    return [unrecorded_metric_warning(metric, policy.keep_best_n, recorded)]


def _plan_rows(run: Run, plan, facts) -> list[dict]:
    """One row per decision, oldest first, with what the table shows next to it."""
    by_prefix = {f.prefix: f for f in facts}
    ids = dict(run.checkpoints.values_list("prefix", "id"))
    # The order the plan lists its decisions in, as each row's key: a page's cursor holds it.
    order = decision_key if by_step(facts) else decision_key_by_time
    rows = []
    for d in plan.decisions:
        f = by_prefix[d.prefix]
        rows.append({
            "id": ids.get(d.prefix), "prefix": d.prefix, "step": d.step, "status": f.status,
            "saved_at": dt.datetime.fromtimestamp(f.saved_at, tz=dt.UTC), "size": f.size_bytes,
            "keep": d.keep, "meta_only": d.keep_meta_only, "reasons": d.reasons, "bytes": d.bytes,
            "files": len(d.delete_files), "key": list(order(f.step, f.saved_at, f.prefix)),
        })
    return rows


def _timeline(rows: list[dict]) -> dict:
    """Kept and deleted checkpoints as (time in ms, step) points, each series thinned evenly."""
    series: dict[str, list] = {"kept": [], "deleted": []}
    for i, r in enumerate(rows):
        if r["keep"] or r["files"]:
            point = [int(r["saved_at"].timestamp() * 1000), r["step"] if r["step"] is not None else i]
            series["kept" if r["keep"] else "deleted"].append(point)
    total = {k: len(v) for k, v in series.items()}
    for key, points in series.items():
        stride = max(1, -(-len(points) // TIMELINE_MAX_POINTS))
        series[key] = points[::stride]
    return {**series, "total": total}
