"""Serving targets: create one for a run, publish SavedModel exports to it, prune its versions (maintainers)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, serving
from dashboard.models import Export, ServingTarget
from persistence import serving as engine


def serving_list(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    targets = ServingTarget.objects.select_related("run").order_by("model_name")
    return render(request, "dashboard/serving_list.html", {"targets": targets})


def serving_new(request: HttpRequest, name: str) -> HttpResponse:
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    from django.conf import settings

    values = {"model_name": run.name, "base_path": str(settings.SERVING_ROOT), "keep_newest": 3}
    error = ""
    if request.method == "POST":
        values = {key: request.POST.get(key, "").strip() for key in values}
        try:
            keep = int(values["keep_newest"] or 3)
            target = serving.create_target(run, values["model_name"], values["base_path"], keep_newest=keep,
                                           actor=request.user)
        except ValueError as exc:
            error = str(exc) if "invalid literal" not in str(exc) else "Keep newest must be a whole number."
        else:
            messages.success(request, f"Serving target {target.model_name} created.")
            return redirect(target)
    return render(request, "dashboard/serving_new.html", {"run": run, "values": values, "error": error})


def serving_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    target = get_object_or_404(ServingTarget.objects.select_related("run"), pk=pk)
    decisions = serving.plan_versions(target)
    labels = serving.labels(target)
    by_version: dict[int, list[str]] = {}
    for label, version in labels.items():
        by_version.setdefault(version, []).append(label)
    exports = (Export.objects.filter(checkpoint__run=target.run, kind=Export.SAVED_MODEL, verified=True)
               .select_related("checkpoint").order_by("-checkpoint__step"))
    return render(request, "dashboard/serving_detail.html", {
        "target": target, "run": target.run, "rows": [(d, by_version.get(d.version, [])) for d in decisions],
        "doomed": [d.version for d in decisions if not d.keep], "exports": exports,
        "config_path": f"{target.base_path}/{engine.CONFIG_NAME}",
    })


@require_POST
def serving_publish(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(ServingTarget.objects.select_related("run"), pk=pk)
    access.get_run_for_user(request, target.run.name, access.MAINTAIN)
    export = Export.objects.select_related("checkpoint__run").filter(pk=request.POST.get("export") or 0).first()
    if export is None:
        messages.error(request, "Choose a SavedModel export to publish.")
        return redirect(target)
    try:
        version = serving.publish(target, export, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Version {version} of {target.model_name} is published.")
    return redirect(target)


@require_POST
def serving_prune(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(ServingTarget.objects.select_related("run"), pk=pk)
    access.get_run_for_user(request, target.run.name, access.MAINTAIN)
    seen = [int(v) for v in request.POST.getlist("version") if v.isdigit()]
    try:
        removed = serving.prune_versions(target, seen=seen, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Removed {len(removed)} version{'s' if len(removed) != 1 else ''}.")
    return redirect(target)
