"""Aliases: point one of a run's names (``prod``, ``canary``) at a checkpoint, or remove it (maintainers)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, aliases
from dashboard.models import Checkpoint


def run_aliases(request: HttpRequest, name: str) -> HttpResponse:
    """The run's aliases and their history as a timeline: a fragment the run page loads after itself."""
    run = access.get_run_for_user(request, name)
    return render(request, "dashboard/partials/run_aliases.html", {
        "run": run, "aliases": list(run.aliases.select_related("checkpoint", "updated_by")),
        "history": aliases.alias_history(run), "targets": list(run.serving_targets.all()),
    })


@require_POST
def checkpoint_alias(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    checkpoint = get_object_or_404(Checkpoint, run=run, pk=pk)
    checkpoint.run = run
    try:
        alias = aliases.set_alias(run, request.POST.get("alias", ""), checkpoint, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Alias {alias.name} now points at {checkpoint.prefix}.")
    return redirect(checkpoint)


@require_POST
def alias_remove(request: HttpRequest, name: str, alias: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    try:
        aliases.remove_alias(run, alias, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Alias {alias} removed from {run.name}.")
    return redirect(run)
