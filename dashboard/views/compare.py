"""Compare two checkpoints variable by variable, and step over step through a run.

The work runs as ``compare`` jobs (the web process never imports TensorFlow); results are stored
(``Comparison`` rows, and the finished step-over-step job's ``result``), so a pair or a heatmap
that was computed before opens at once. While a job runs, its progress partial is polled; once it
ends the poll answers ``HX-Refresh`` and the page reloads itself into the result.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import F
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from dashboard import access, comparing
from dashboard.jobs import STEP_OVER_STEP_MODE
from dashboard.models import Checkpoint, Comparison, Job, Run
from dashboard.views import heatmap
from dashboard.views.common import start_job

PICK_LIMIT = 500  # newest checkpoints offered per run in the pick page's selects
CHART_LIMIT = 60  # bars in the relative-change chart (largest first)
STEPS_DEFAULT, STEPS_MIN, STEPS_MAX = 50, 2, 500
STEPS_CHOICES = (10, 20, 50, 100, 200, 500)


# --- the compare page ---------------------------------------------------------------------------


def compare(request: HttpRequest) -> HttpResponse:
    """Two checkpoints side by side (``?a=ID&b=ID``); ticked history rows (``?c=ID&c=ID``); or the pick page."""
    access.require(request, access.VIEW)
    if "c" in request.GET:
        return _from_ticks(request, request.GET.getlist("c"))
    (a, b), problems = _pair(request.GET)
    if a is None or b is None or "pick" in request.GET:
        submitted = "pick" not in request.GET and ("a_run" in request.GET or "b_run" in request.GET)
        if submitted and not problems:
            problems = ["Choose a checkpoint for both A and B."]
        return _pick(request, problems)
    comparison = Comparison.for_pair(a, b)
    context = {"a": a, "b": b, "comparison": comparison, "swap_url": _compare_url(b.pk, a.pk)}
    if comparison is not None:
        context.update(_result_context(request, comparison))
    else:
        job = Comparison.jobs_for_pair(a, b).select_related("requested_by").first()
        stale = Comparison.objects.filter(a=a, b=b).exists()
        context.update(job=job, stale=stale, autostart=_should_autostart(job, stale))
    return render(request, "dashboard/compare.html", context)


@require_POST
def compare_start(request: HttpRequest) -> HttpResponse:
    """Start (or join) the comparison of a pair; a fresh stored result needs no job at all."""
    access.require(request, access.OPERATE)
    (a, b), problems = _pair(request.POST)
    if a is None or b is None:
        messages.error(request, " ".join(problems) or "Choose two checkpoints to compare.")
        return redirect("compare")
    gone = [c for c in (a, b) if not c.on_disk]
    if gone:
        messages.error(request, f"{gone[0]} is {gone[0].status}: its files are gone, so it cannot be compared.")
    elif Comparison.for_pair(a, b) is None and not Comparison.jobs_for_pair(a, b).exclude(status__in=Job.ENDED):
        start_job(request, Job.COMPARE, run=b.run, checkpoint=b, params={"a": a.pk, "b": b.pk})
    return redirect(_compare_url(a.pk, b.pk))


def compare_status(request: HttpRequest, pk: int) -> HttpResponse:
    """A compare job's progress, polled by htmx; once it ended, the page reloads into the result."""
    access.require(request, access.VIEW)
    job = get_object_or_404(Job, pk=pk, kind=Job.COMPARE)
    response = render(request, "dashboard/partials/compare_progress.html", {"job": job})
    if job.is_ended:
        response["HX-Refresh"] = "true"
    return response


# --- step over step -----------------------------------------------------------------------------


def step_over_step(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name)
    latest = comparing.latest_step_over_step(run)
    newest_job = comparing.step_over_step_jobs(run).first()
    # Only whether there are two matters (and how many when there are not): never count a long run.
    readable = run.checkpoints.filter(status__in=[Checkpoint.PRESENT, Checkpoint.VERIFIED])[:2].count()
    last = _int(request.GET.get("last")) or (latest.result.get("last") if latest else None) or STEPS_DEFAULT
    context = {
        "run": run, "job": newest_job, "latest": latest, "readable": readable,
        "last": last, "choices": sorted({*STEPS_CHOICES, last}),
        "heatmap": heatmap.heatmap(latest.result, scale=heatmap.Scale.from_query(request.GET)) if latest else None,
        "changed_since": _changed_since(run, latest.result) if latest else False,
    }
    return render(request, "dashboard/heatmap.html", context)


@require_POST
def step_over_step_start(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.OPERATE)
    last = _int(request.POST.get("last"))
    if last is None or not STEPS_MIN <= last <= STEPS_MAX:
        messages.error(request, f"Choose how many checkpoints to include: a whole number from {STEPS_MIN} to {STEPS_MAX}.")
    elif not comparing.step_over_step_jobs(run).exclude(status__in=Job.ENDED).exists():
        start_job(request, Job.COMPARE, run=run, params={"mode": STEP_OVER_STEP_MODE, "last": last})
    return redirect("run-steps", name=run.name)


# --- helpers: loading -----------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _pair(params: QueryDict) -> tuple[tuple[Checkpoint | None, Checkpoint | None], list[str]]:
    """Checkpoints ``a`` and ``b`` named by id in ``params``, and what was wrong with them."""
    found: list[Checkpoint | None] = []
    problems = []
    for key in ("a", "b"):
        raw = params.get(key, "")
        pk = _int(raw)
        checkpoint = Checkpoint.objects.select_related("run").filter(pk=pk).first() if pk is not None else None
        if raw and checkpoint is None:
            problems.append(f"There is no checkpoint #{raw}." if pk is not None else f"“{raw}” is not a checkpoint id.")
        found.append(checkpoint)
    return (found[0], found[1]), problems


def _compare_url(a: int, b: int, **params: str) -> str:
    query = {"a": a, "b": b, **{k: v for k, v in params.items() if v}}
    return f"{reverse('compare')}?{urlencode(query)}"


def _from_ticks(request: HttpRequest, ticked: list[str]) -> HttpResponse:
    """Two ticked history rows, older first; one tick opens the pick page with it as A."""
    ids = {pk for pk in (_int(v) for v in ticked) if pk is not None}
    rows = sorted(
        Checkpoint.objects.filter(pk__in=ids).select_related("run"),
        key=lambda c: (c.step is None, c.step or 0, c.saved_at),
    )
    if len(rows) == 2:
        return redirect(_compare_url(rows[0].pk, rows[1].pk))
    if len(rows) == 1:
        messages.info(request, "Now choose the checkpoint to compare it with.")
        only = rows[0]
        return redirect(f"{reverse('compare')}?{urlencode({'a_run': only.run.name, 'a': only.pk, 'b_run': only.run.name, 'pick': 1})}")
    messages.warning(request, f"Tick exactly two checkpoints to compare (you ticked {len(rows)}).")
    run = Run.objects.filter(name=request.GET.get("run", "")).first()
    return redirect(run if run else "compare")


def _pick(request: HttpRequest, problems: list[str]) -> HttpResponse:
    """Choose a run and a checkpoint for each side; changing a run re-renders that side's steps."""
    runs = list(Run.objects.order_by("name").only("id", "name"))
    by_name = {r.name: r for r in runs}
    default = by_name.get(request.GET.get("run", "")) or (runs[0] if runs else None)
    sides = []
    for key, label in (("a", "A (before)"), ("b", "B (after)")):
        run = by_name.get(request.GET.get(f"{key}_run", "")) or default
        options = []
        if run is not None:
            options = list(
                run.checkpoints.on_disk()
                .order_by(F("step").desc(nulls_last=True), "-saved_at")
                .only("id", "prefix", "step", "saved_at", "size_bytes")[:PICK_LIMIT]
            )
        ids = [c.pk for c in options]
        chosen = _int(request.GET.get(key))
        if chosen not in ids:
            # Defaults compare the two newest: the question people ask most ("what did the last
            # stretch of training change?").
            chosen = ids[min(1, len(ids) - 1)] if key == "a" and ids else (ids[0] if ids else None)
        sides.append({"key": key, "label": label, "run": run, "options": options, "chosen": chosen})
    return render(
        request, "dashboard/compare_pick.html",
        {"runs": runs, "sides": sides, "problems": problems, "limit": PICK_LIMIT},
    )


def _should_autostart(job: Job | None, stale: bool) -> bool:
    """Start the comparison on opening the page unless a job for it runs or just failed.

    A failed or canceled job is shown with its reason and a button instead: retrying it on every
    page load would loop.
    """
    if job is None:
        return True
    return job.status == Job.FINISHED and stale


# --- helpers: presentation ------------------------------------------------------------------

COLUMNS = [
    # (sort key or None, header, numeric)
    ("name", "Variable", False),
    (None, "Shape A", False),
    (None, "Shape B", False),
    (None, "Dtype A", False),
    (None, "Dtype B", False),
    ("l2_a", "L2 A", True),
    ("l2_b", "L2 B", True),
    ("l2_diff", "L2 diff", True),
    ("max_abs_diff", "Max |diff|", True),
    ("relative_change", "Relative change", True),
    ("cosine", "Cosine", True),
    (None, "NaN / Inf", True),
    (None, "Note", False),
]
NOTE_STYLE = {
    "only in A": "warn", "only in B": "info", "shape changed": "bad", "dtype changed": "bad",
    "not numeric": "muted", "A is all zeros": "muted", "B is all zeros": "warn",
}


def _num(value: float | int | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    magnitude = abs(value)
    return f"{value:.3e}" if magnitude >= 1e5 or magnitude < 1e-3 else f"{value:.4g}"


def _shape(shape: list[int] | None) -> str:
    return "—" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _signed(value: float | None, fmt) -> str:
    if value is None:
        return "—"
    return ("+" if value > 0 else "") + fmt(value)


def _bytes(value: float) -> str:
    sign, value = ("-" if value < 0 else ""), abs(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{sign}{int(value)} B" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1000
    return ""


def _duration(seconds: float) -> str:
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 120:
        return f"{sign}{s:.0f} s"
    if s < 7200:
        return f"{sign}{s / 60:.0f} min"
    if s < 172800:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} days"


def _display_row(row: dict) -> dict:
    nan_inf = [row.get(k) for k in ("nan_a", "inf_a", "nan_b", "inf_b")]
    bad = any(nan_inf)
    relative = row.get("relative_change")
    if relative is None and row.get("changed"):
        relative_text = "∞" if row.get("note") == "A is all zeros" else "NaN"
    else:
        relative_text = _num(relative)
    return {
        "name": row["name"],
        "shape_a": _shape(row.get("shape_a")), "shape_b": _shape(row.get("shape_b")),
        "dtype_a": row.get("dtype_a") or "—", "dtype_b": row.get("dtype_b") or "—",
        "shape_changed": row.get("note") == "shape changed", "dtype_changed": row.get("note") == "dtype changed",
        "l2_a": _num(row.get("l2_a")), "l2_b": _num(row.get("l2_b")), "l2_diff": _num(row.get("l2_diff")),
        "max_abs_diff": _num(row.get("max_abs_diff")), "relative_change": relative_text,
        "cosine": "—" if row.get("cosine") is None else f"{row['cosine']:.6f}",
        "nan_inf": (f"{row.get('nan_a') or 0}/{row.get('inf_a') or 0} → {row.get('nan_b') or 0}/{row.get('inf_b') or 0}"
                    if bad else ""),
        "bad": bad,
        "note": row.get("note") or "", "note_style": NOTE_STYLE.get(row.get("note") or "", "muted"),
        "changed": bool(row.get("changed")),
    }


def _weights_totals(rows: list[dict]) -> dict:
    """The summary's totals over model weights only (optimizer slots and counters left out)."""
    compared = [r for r in rows if r.get("l2_diff") is not None]
    finite = [r for r in compared if isinstance(r.get("relative_change"), int | float)
              and math.isfinite(r["relative_change"])]
    top = max(finite, key=lambda r: r["relative_change"], default=None)
    return {
        "variables": len(rows), "compared": len(compared), "changed": sum(1 for r in rows if r.get("changed")),
        "total_l2_diff": math.sqrt(sum(r["l2_diff"] ** 2 for r in compared if math.isfinite(r["l2_diff"]))),
        "max_relative_change": top["relative_change"] if top else None,
        "max_relative_change_variable": top["name"] if top else None,
    }


def _result_context(request: HttpRequest, comparison: Comparison) -> dict:
    from persistence.training import is_training_state

    changed_only = request.GET.get("changed") == "1"
    # Optimizer slots move with every step and dwarf what people compare checkpoints for: the
    # model's weights. They are hidden unless the filter form was sent without the switch, in
    # the table and in the totals.
    weights_only = request.GET.get("weights") == "1" if "filtered" in request.GET else True
    contains = request.GET.get("q", "")[:200]
    sort = request.GET.get("sort", Comparison.DEFAULT_SORT)
    if sort.lstrip("-") not in Comparison.SORT_KEYS:
        sort = Comparison.DEFAULT_SORT
    rows = comparison.rows(changed_only=changed_only, contains=contains, sort=sort)
    summary = dict(comparison.summary)
    hidden = [r for r in comparison.variables if is_training_state(r["name"])] if weights_only else []
    if hidden:
        rows = [r for r in rows if not is_training_state(r["name"])]
        summary.update(_weights_totals([r for r in comparison.variables if not is_training_state(r["name"])]))
    keep = {"changed": "1" if changed_only else "", "q": contains, "filtered": "1", "weights": "1" if weights_only else ""}
    headers = []
    for key, label, numeric in COLUMNS:
        header = {"label": label, "numeric": numeric, "url": None, "aria": None, "arrow": ""}
        if key:
            descending = sort == f"-{key}"
            ascending = sort == key
            # Numbers open largest first, names A to Z; a second click flips the direction.
            target = key if descending or (not ascending and key == "name") else f"-{key}"
            header.update(
                url=_compare_url(comparison.a_id, comparison.b_id, sort=target, **keep),
                aria="descending" if descending else "ascending" if ascending else None,
                arrow=" ▼" if descending else " ▲" if ascending else "",
            )
        headers.append(header)
    metrics = [
        {"name": name, "a": _num(m.get("a")) if isinstance(m.get("a"), int | float) else (m.get("a") or "—"),
         "b": _num(m.get("b")) if isinstance(m.get("b"), int | float) else (m.get("b") or "—"),
         "delta": _signed(m.get("delta"), _num),
         "relative": _signed(None if m.get("relative") is None else 100 * m["relative"], lambda v: f"{v:.2f} %")}
        for name, m in comparison.metrics.items()
    ]
    return {
        "rows": [_display_row(r) for r in rows],
        "total_rows": len(comparison.variables) - len(hidden),
        "headers": headers,
        "summary": summary,
        "hidden_training_state": len(hidden),
        "filters": {"changed": changed_only, "q": contains, "sort": sort, "weights_only": weights_only},
        "chart": _chart(rows),
        "metrics": metrics,
        "facts": {
            "max_relative_change": _num(summary.get("max_relative_change")),
            "total_l2_diff": _num(summary.get("total_l2_diff")),
            "step_delta": _signed(summary.get("step_delta"), lambda v: f"{v:,}"),
            "size_delta": _signed(summary.get("size_delta"), _bytes),
            "time_delta": _signed(summary.get("seconds_delta"), _duration),
            "elapsed": _duration(summary.get("elapsed_seconds") or 0),
        },
    }


def _chart(rows: list[dict]) -> dict:
    """Bars of relative change, largest first, for the variables the table shows (finite values only)."""
    finite = [r for r in rows if isinstance(r.get("relative_change"), int | float) and math.isfinite(r["relative_change"])]
    finite.sort(key=lambda r: -r["relative_change"])
    shown = finite[:CHART_LIMIT]
    return {
        "labels": [r["name"] for r in shown],
        "values": [r["relative_change"] for r in shown],
        "changed": [bool(r.get("changed")) for r in shown],
        "shown": len(shown),
        "height": 70 + 20 * len(shown),  # pixels: one readable bar per variable
        "total": len(rows),
        "without_value": len(rows) - len(finite),
    }


def _changed_since(run: Run, result: dict) -> bool:
    """True when the run's newest checkpoints are no longer the ones the stored heatmap read."""
    stored = [(c["id"], c["fingerprint"]) for c in result.get("checkpoints", [])]
    current = [(c.pk, c.fingerprint) for c in comparing.step_over_step_checkpoints(run, result.get("last", STEPS_DEFAULT))]
    return stored != current
