"""Save jobs (train a recipe and write checkpoints) and re-saving a subset of a checkpoint."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from dashboard import access
from dashboard.forms import ResaveForm, SaveJobForm
from dashboard.models import Checkpoint, Job
from dashboard.views.common import start_job


def save_new(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.OPERATE)
    # The form asks for its rotation preview again (htmx GET) whenever a field changes.
    preview_only = request.method == "GET" and request.GET.get("preview") == "rotation"
    data = request.POST if request.method == "POST" else (request.GET if preview_only else None)
    form = SaveJobForm(data or None, run=run)
    if request.method == "POST" and form.is_valid():
        job = start_job(request, Job.SAVE, run=run, checkpoint=form.restore_checkpoint, params=form.job_params())
        if job is not None:
            messages.success(request, f"Save job #{job.pk} started: {form.cleaned_data['steps']} steps.")
            return redirect(job)
        return redirect(run)
    context = {"run": run, "form": form, "rotation": form.rotation_preview()}
    if preview_only:
        return render(request, "dashboard/partials/save_rotation.html", context)
    return render(request, "dashboard/save_form.html", context)


def resave_new(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.OPERATE)
    checkpoint = get_object_or_404(Checkpoint.objects.on_disk(), run=run, pk=pk)
    form = ResaveForm(request.POST or None, checkpoint=checkpoint)
    if request.method == "POST" and form.is_valid():
        job = start_job(request, Job.SAVE, run=run, checkpoint=checkpoint, params=form.job_params())
        if job is not None:
            messages.success(request, f"Re-save job #{job.pk} started: writing {form.cleaned_data['new_prefix']}.")
            return redirect(job)
        return redirect(checkpoint)
    return render(request, "dashboard/resave_form.html", {"run": run, "checkpoint": checkpoint, "form": form})
