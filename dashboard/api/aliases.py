"""Aliases: resolve one to its checkpoint and exports ("the prod SavedModel"), move or remove it."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Body, Router, Status

from dashboard import access, aliases
from dashboard.models import Alias, Export
from dashboard.representations import checkpoint_item, export_item

from .problems import ApiProblem
from .schemas import AliasIn, AliasOut, AliasResolved

router = Router(tags=["aliases"])


def _item(alias: Alias) -> dict:
    return {"name": alias.name, "run": alias.run.name, "checkpoint": checkpoint_item(alias.checkpoint),
            "updated_at": alias.updated_at.isoformat() if alias.updated_at else None}


def _alias(request: HttpRequest, name: str, alias: str, perm: str = access.VIEW) -> Alias:
    run = access.get_run_for_user(request, name, perm)
    found = Alias.objects.select_related("run", "checkpoint").filter(run=run, name=alias).first()
    if found is None:
        raise ApiProblem(404, f"run {run.name} has no alias {alias!r}", kind="not-found")
    return found


@router.get("/runs/{name}/aliases", response=list[AliasOut], summary="A run's aliases")
def list_aliases(request: HttpRequest, name: str):
    run = access.get_run_for_user(request, name)
    return [_item(a) for a in Alias.objects.select_related("run", "checkpoint").filter(run=run)]


@router.get("/runs/{name}/aliases/{alias}", response=AliasResolved,
            summary="The checkpoint an alias points at, with its exports")
def resolve_alias(request: HttpRequest, name: str, alias: str):
    """`GET /api/v1/runs/antispam/aliases/prod` then the `saved_model` item of `exports`: the prod
    SavedModel, whatever its step."""
    found = _alias(request, name, alias)
    exports = Export.objects.select_related("checkpoint__run").filter(checkpoint=found.checkpoint).order_by("-id")
    return {**_item(found), "exports": [export_item(e) for e in exports]}


@router.put("/runs/{name}/aliases/{alias}", response=AliasOut, summary="Point an alias at a checkpoint (maintainer)")
def set_alias(request: HttpRequest, name: str, alias: str, body: AliasIn = Body(...)):
    run = access.get_run_for_user(request, name, access.MAINTAIN)
    if (body.step is None) == (body.checkpoint_id is None):
        raise ApiProblem(400, "give either step or checkpoint_id", kind="validation", title="Invalid request",
                         errors=[{"field": "step", "message": "give either step or checkpoint_id"}])
    rows = run.checkpoints.order_by("-saved_at")
    checkpoint = (rows.filter(step=body.step) if body.step is not None else rows.filter(pk=body.checkpoint_id)).first()
    if checkpoint is None:
        raise ApiProblem(404, f"run {run.name} has no such checkpoint", kind="not-found")
    try:
        moved = aliases.set_alias(run, alias, checkpoint, actor=request.user)
    except ValueError as exc:
        raise ApiProblem(409, str(exc), kind="alias-refused") from None
    return _item(moved)


@router.delete("/runs/{name}/aliases/{alias}", response={204: None}, summary="Remove an alias (maintainer)")
def remove_alias(request: HttpRequest, name: str, alias: str):
    found = _alias(request, name, alias, access.MAINTAIN)
    aliases.remove_alias(found.run, found.name, actor=request.user)
    return Status(204, None)
