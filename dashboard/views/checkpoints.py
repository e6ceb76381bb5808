"""Actions on one checkpoint: verify, partial restore and freeze (operators), make latest (maintainers).

Verify and freeze run as jobs (they import TensorFlow); make latest rewrites the state file inline,
because ``persistence.statefile`` is pure Python.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from dashboard import access, artifacts
from dashboard.forms import FreezeForm, PartialRestoreForm, VerifyForm
from dashboard.models import Checkpoint, Job
from dashboard.views.common import start_job


def _checkpoint(request: HttpRequest, name: str, pk: int, perm: str) -> Checkpoint:
    run = access.get_run_for_user(request, name, perm)
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("run", "meta_source__run"), run=run, pk=pk)
    checkpoint.run = run
    return checkpoint


@require_POST
def checkpoint_verify(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    checkpoint = _checkpoint(request, name, pk, access.OPERATE)
    form = VerifyForm(request.POST, checkpoint=checkpoint)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("output", ["Invalid request."])))
    elif checkpoint.status == Checkpoint.PRUNED:
        messages.error(request, f"{checkpoint.prefix} was pruned: there is nothing left to verify.")
    elif not checkpoint.on_disk:
        messages.error(request, f"The files of {checkpoint.prefix} are gone ({checkpoint.gone_reason}): "
                                "there is nothing left to verify.")
    elif checkpoint.v1_refusal:
        messages.error(request, checkpoint.v1_refusal)
    elif start_job(request, Job.RESTORE, run=checkpoint.run, checkpoint=checkpoint, params=form.job_params()):
        messages.success(request, f"Verifying {checkpoint.prefix}: every tensor is read and checked.")
    return redirect(checkpoint)


def checkpoint_freeze(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    checkpoint = _checkpoint(request, name, pk, access.OPERATE)
    if checkpoint.v1_refusal:
        messages.error(request, checkpoint.v1_refusal)
        return redirect(checkpoint)
    form = FreezeForm(request.POST if request.method == "POST" else None, checkpoint=checkpoint)
    if request.method == "POST" and form.is_valid():
        params = form.job_params()
        try:
            job = start_job(request, Job.FREEZE, run=checkpoint.run, checkpoint=checkpoint, params=params)
        except Checkpoint.FreezeRunning as exc:
            messages.error(request, format_html('Not started: {} <a href="{}">Job #{}</a>', str(exc),
                                                exc.job.get_absolute_url(), exc.job.pk))
            return redirect(checkpoint)
        if job:
            messages.success(request, f"Freezing {checkpoint.prefix}: the export appears below once it is verified.")
        return redirect(checkpoint)
    return render(request, "dashboard/freeze_form.html", {
        "run": checkpoint.run, "checkpoint": checkpoint, "form": form, "export_directory": _export_directory(checkpoint),
    })


def _export_directory(checkpoint: Checkpoint) -> str:
    """Where this checkpoint's freezes are written, as the worker will resolve it."""
    from persistence.files import PathOutsideRoots

    try:
        return str(artifacts.export_path(checkpoint, "outputs")).rpartition("/")[0]
    except PathOutsideRoots:
        return "(outside the export root: the freeze will be refused)"


def checkpoint_partial_restore(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    checkpoint = _checkpoint(request, name, pk, access.OPERATE)
    if checkpoint.v1_refusal:
        messages.error(request, checkpoint.v1_refusal)
        return redirect(checkpoint)
    form = PartialRestoreForm(request.POST if request.method == "POST" else None, checkpoint=checkpoint)
    if request.method == "POST" and form.is_valid():
        job = start_job(request, Job.RESTORE, run=checkpoint.run, checkpoint=checkpoint, params=form.job_params())
        if job:
            messages.success(request, f"Partial restore of {checkpoint.prefix} started.")
            return redirect(job)
        return redirect(checkpoint)
    return render(request, "dashboard/partial_restore_form.html",
                  {"run": checkpoint.run, "checkpoint": checkpoint, "form": form})


@require_POST
def checkpoint_make_latest(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    checkpoint = _checkpoint(request, name, pk, access.MAINTAIN)
    try:
        result = artifacts.make_latest(checkpoint.run, checkpoint, user=request.user)
    except (ValueError, OSError) as exc:
        messages.error(request, f"Not changed: {exc}")
    else:
        was = f" (was {result.previous_latest})" if result.previous_latest else ""
        messages.success(request, f"{checkpoint.prefix} is now the latest checkpoint{was}.")
    return redirect(checkpoint)


def checkpoint_exports(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """The checkpoint's exports as a partial, polled by htmx while a freeze of it runs."""
    checkpoint = _checkpoint(request, name, pk, access.VIEW)
    return render(
        request,
        "dashboard/partials/checkpoint_exports.html",
        {"run": checkpoint.run, "checkpoint": checkpoint, "exports": list(checkpoint.exports.all())},
    )
