"""Checkpoints: a run's history, one checkpoint, freeze, verify, pin and unpin."""

from __future__ import annotations

from django.db.models import Exists, OuterRef
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Body, Header, Query, Router

from dashboard import access, pruning
from dashboard.forms import FreezeForm, VerifyForm
from dashboard.models import Checkpoint, Export, Job
from dashboard.representations import (
    CHECKPOINT_ITEM_COLUMNS,
    checkpoint_columns_item,
    checkpoint_detail,
    checkpoint_item,
    job_reference,
)

from . import idempotency
from .pagination import DEFAULT_LIMIT, MAX_LIMIT, Key, Ordering, paginate
from .problems import ApiProblem
from .schemas import (
    CHECKPOINT_STATUSES,
    CheckpointDetail,
    CheckpointOut,
    CheckpointPage,
    FreezeIn,
    JobStarted,
    PinIn,
    VerifyIn,
)
from .starting import form_problem, start_job

router = Router(tags=["checkpoints"])

ORDERINGS = {
    "step": Ordering("step", [Key("step", nullable=True), Key("id")]),
    "-step": Ordering("-step", [Key("step", descending=True, nullable=True), Key("id")]),
}
IDEMPOTENCY_KEY = Header(None, alias=idempotency.HEADER, description=idempotency.HEADER_DESCRIPTION)


@router.get("/runs/{name}/checkpoints", response=CheckpointPage, summary="A run's checkpoints, by step")
def list_checkpoints(
    request: HttpRequest, name: str,
    status: CHECKPOINT_STATUSES | None = None,
    min_step: int | None = None, max_step: int | None = None,
    pinned: bool | None = None, has_export: bool | None = None,
    ordering: str = Query("-step", pattern=r"^-?step$", description="`step` (oldest first) or `-step`."),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT), cursor: str | None = None,
):
    run = access.get_run_for_user(request, name)
    # Only what ``checkpoint_item`` reads, as plain values: variable and file lists can be large JSON.
    rows = run.checkpoints.values(*CHECKPOINT_ITEM_COLUMNS)
    if status is not None:
        rows = rows.filter(status=status)
    if min_step is not None:
        rows = rows.filter(step__gte=min_step)
    if max_step is not None:
        rows = rows.filter(step__lte=max_step)
    if pinned is not None:
        rows = rows.filter(pinned=pinned)
    if has_export is not None:
        exported = Exists(Export.objects.filter(checkpoint=OuterRef("pk")))
        rows = rows.filter(exported if has_export else ~exported)
    return paginate(rows, ORDERINGS[ordering], limit, cursor, checkpoint_columns_item)


def _checkpoint(request: HttpRequest, pk: int, perm: str) -> Checkpoint:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("run", "meta_source__run"), pk=pk)
    access.require(request, perm)
    return checkpoint


@router.get("/checkpoints/{id}", response=CheckpointDetail,
            summary="One checkpoint with its files and variables")
def get_checkpoint(request: HttpRequest, id: int):
    return checkpoint_detail(_checkpoint(request, id, access.VIEW))


def _refuse_unusable(checkpoint: Checkpoint, action: str) -> None:
    if not checkpoint.on_disk:
        raise ApiProblem(409, f"{checkpoint.prefix} is {checkpoint.status}: there is nothing left to {action}.",
                         kind="checkpoint-gone")
    if checkpoint.v1_refusal:
        raise ApiProblem(409, checkpoint.v1_refusal, kind="v1-checkpoint")


@router.post("/checkpoints/{id}/freeze", response={202: JobStarted},
             summary="Export as a verified .pb, SavedModel, TFLite or ONNX (operator)")
def freeze_checkpoint(request: HttpRequest, id: int, body: FreezeIn = Body(default=None),
                      idempotency_key: str | None = IDEMPOTENCY_KEY):
    """Output names are checked against the graph before the job starts; the job writes the export
    (a frozen `.pb` unless `kind` says otherwise), loads it again with its own runtime and records
    the largest difference from the checkpoint on a sample input."""
    checkpoint = _checkpoint(request, id, access.OPERATE)
    body = body or FreezeIn()

    def start() -> tuple[int, dict]:
        _refuse_unusable(checkpoint, "freeze")
        # One form, so that the graph's outline is read once: built bound, given its data once the
        # suggestions (the choices of ``outputs``) are known.
        form = FreezeForm({}, checkpoint=checkpoint)
        suggested = {value for value, _ in form.fields["outputs"].choices}
        typed = [o for o in body.outputs if o not in suggested]
        if form.tf2 and typed:
            raise ApiProblem(400, f"outputs: a TF2 checkpoint is frozen through its recipe, whose outputs are "
                                  f"{', '.join(sorted(suggested)) or 'unknown'}; not {', '.join(typed)}.",
                             kind="validation", title="Invalid request",
                             errors=[{"field": "outputs", "message": "not an output of the run's recipe"}])
        form.data = {
            "kind": "tflite_quantized" if body.kind == "tflite" and body.quantize else body.kind,
            "outputs": [o for o in body.outputs if o in suggested],
            "other_outputs": ",".join(typed),
            "clear_devices": "on" if body.clear_devices else "",
            "variables_allowlist": "\n".join(body.variables_allowlist),
            "variables_denylist": "\n".join(body.variables_denylist),
        }
        if not form.is_valid():
            raise form_problem(form, {"outputs": "outputs", "other_outputs": "outputs"})
        try:
            job = start_job(request, Job.FREEZE, run=checkpoint.run, checkpoint=checkpoint, params=form.job_params())
        except Checkpoint.FreezeRunning as exc:
            raise ApiProblem(409, str(exc), kind="freeze-running",
                             **({"job": job_reference(exc.job)["job"]} if exc.job else {})) from None
        return 202, job_reference(job)

    return idempotency.once(request, idempotency_key, start)


@router.post("/checkpoints/{id}/verify", response={202: JobStarted},
             summary="Read and check every tensor (operator)")
def verify_checkpoint(request: HttpRequest, id: int, body: VerifyIn = Body(default=None),
                      idempotency_key: str | None = IDEMPOTENCY_KEY):
    checkpoint = _checkpoint(request, id, access.OPERATE)
    body = body or VerifyIn()

    def start() -> tuple[int, dict]:
        _refuse_unusable(checkpoint, "verify")
        form = VerifyForm({"output": body.output}, checkpoint=checkpoint)
        if not form.is_valid():
            raise form_problem(form)
        job = start_job(request, Job.RESTORE, run=checkpoint.run, checkpoint=checkpoint, params=form.job_params())
        return 202, job_reference(job)

    return idempotency.once(request, idempotency_key, start)


def _set_pin(request: HttpRequest, id: int, body: PinIn | None, pin: bool) -> dict:
    checkpoint = _checkpoint(request, id, access.MAINTAIN)
    reason = body.reason if body else ""
    try:
        (pruning.pin if pin else pruning.unpin)(checkpoint, reason, actor=request.user)
    except ValueError as exc:
        raise ApiProblem(409, str(exc), kind="pin-refused") from None
    return checkpoint_item(checkpoint)


@router.post("/checkpoints/{id}/pin", response=CheckpointOut,
             summary="Keep whatever the retention policy says (maintainer)")
def pin_checkpoint(request: HttpRequest, id: int, body: PinIn = Body(default=None)):
    return _set_pin(request, id, body, True)


@router.post("/checkpoints/{id}/unpin", response=CheckpointOut,
             summary="Let the retention policy decide again (maintainer)")
def unpin_checkpoint(request: HttpRequest, id: int, body: PinIn = Body(default=None)):
    return _set_pin(request, id, body, False)
