"""Artifacts: reading a checkpoint back (verify, restore), freezing it into a served graph,
and pointing a run's state file at it.

The reads and the freeze import TensorFlow (lazily, through ``persistence``) and run graphs in a
limited child process: they are the code path of the jobs and of ``manage.py verify`` /
``freeze``, never called from a view. ``make_latest`` and ``set_trusted`` are pure Python and
safe in the web process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from persistence import discovery, files

from . import export_storage, summaries, webhooks
from .locks import lock_row
from .models import AuditEvent, Checkpoint, Export, Job, Run, temp_owner_ended
from .models.export import ARCHIVE_STREAMED
from .pruning import check_no_prune_running
from .roots import checkpoint_directory, on_object_storage, run_location
from .scanning import refresh_latest
from .staging import Readable, readable

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    from persistence.restore import InputSpec, MakeLatestResult
    from persistence.sandbox import SandboxLimits

    User = AbstractBaseUser | AnonymousUser
    Progress = Callable[[float, str], object]


def set_trusted(run: Run, trusted: bool, *, actor: User | None = None) -> None:
    """Allow (or forbid again) restoring and freezing graphs with file-system or Python ops."""
    if run.trusted == trusted:
        return
    run.trusted = trusted
    run.save(update_fields=["trusted"])
    AuditEvent.record(
        "trust" if trusted else "distrust",
        f"{'Trusted' if trusted else 'Stopped trusting'} the graphs of {run.name}",
        actor=actor, run=run,
    )


def sample_feed(run: Run, placeholders: list[InputSpec]) -> dict:
    """The recipe's sample input for those ``placeholders`` (``InputSpec``) it fits by name and shape.

    Placeholders left out are fed zeros by the engines. A run trained with another model (or
    a recipe that cannot be loaded) simply gets zeros: verification still compares like with like.
    """
    import numpy as np

    from persistence.recipes import RecipeError, load_recipe

    try:
        sample = load_recipe(run.recipe_path()).sample_input()
    except (RecipeError, NotImplementedError):
        return {}
    fits = {}
    for spec in placeholders:
        if spec.name not in sample:
            continue
        array = np.asarray(sample[spec.name])
        if spec.shape is not None and (
            len(spec.shape) != array.ndim
            or any(d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=True))
        ):
            continue
        fits[spec.name] = array
    return fits


def make_latest(
    run: Run, checkpoint: Checkpoint, *, user: User | None = None, state_file: str = "checkpoint"
) -> MakeLatestResult:
    """Point ``state_file`` at ``checkpoint`` (a rollback), update the rows' flags, audit it.

    Pure Python (``persistence.statefile``): safe to call from a view. The run row is locked
    for the duration so that a prune of the same run cannot interleave its state-file rewrite.
    Raises ``ValueError`` with a message for users.
    """
    from dataclasses import asdict

    from persistence import restore

    if checkpoint.run_id != run.pk:
        raise ValueError(f"{checkpoint.prefix} does not belong to run {run.name}.")
    if checkpoint.status not in (Checkpoint.PRESENT, Checkpoint.VERIFIED):
        raise ValueError(
            f"{checkpoint.prefix} is {checkpoint.status}: only a present or verified checkpoint can be "
            "made latest."
        )
    directory = str(checkpoint_directory(run.directory, objects=True, action="Making a checkpoint latest"))
    with transaction.atomic():
        lock_row(run)
        check_no_prune_running(run, "make a checkpoint latest")
        try:
            result = restore.make_latest(directory, checkpoint.prefix, state_file=state_file)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        refresh_latest(run)
        AuditEvent.record(
            "make_latest",
            f"{state_file} now names {checkpoint.prefix} as latest (was {result.previous_latest or 'nothing'})",
            actor=user, run=run, checkpoint=checkpoint, details=asdict(result),
        )
    return result


def sandbox_limits(checkpoint: Checkpoint, *, writable: tuple[str, ...] = ()) -> SandboxLimits:
    """Limits for a child process that reads this checkpoint or runs its graph (settings-driven)."""
    from persistence import sandbox

    return sandbox.SandboxLimits(
        memory_bytes=sandbox.memory_limit(checkpoint.size_bytes, base_mb=settings.GRAPH_MEMORY_LIMIT_BASE_MB,
                                          factor=settings.GRAPH_MEMORY_LIMIT_FACTOR),
        cpu_seconds=settings.GRAPH_CPU_LIMIT_SECONDS or None,
        writable=writable,
        isolate=settings.GRAPH_SANDBOX_ISOLATE,
    )


def _progress_span(on_progress: Callable | None, start: float, end: float) -> Callable | None:
    # The engines report 0-100 for their own part; a job shows one bar for all of its parts.
    if on_progress is None:
        return None
    return lambda percent, message: on_progress(start + (end - start) * percent / 100, message)


def verify(checkpoint: Checkpoint, *, output: str = "", on_progress: Progress | None = None) -> dict:
    """Read every tensor (TensorFlow checks CRCs), store per-variable statistics and the status.

    A damaged checkpoint is a result (``corrupt``/``incomplete``/``missing`` with TensorFlow's
    message), not an exception. A read that failed without evidence of damage (permission
    denied, out of memory, an I/O error or timeout) changes no status: the error is recorded
    as ``verification["read_error"]`` beside the last verdict, and the next verify that reads
    the checkpoint replaces it. A sound TF1 checkpoint is then restored into its meta graph (its
    own ``.meta`` or its meta source's) in a fresh graph and, when ``output`` is given, that
    tensor is run on the recipe's sample input (zeros for placeholders it does not fit).
    Returns what is stored on ``verification``. Both parts run in a limited child process; a
    limit it hits raises ``SandboxError`` and leaves the status as it was (the checkpoint may
    well be sound: it is our limit that stopped the read).
    """
    from dataclasses import asdict

    from persistence import restore
    from persistence.sandbox import run_sandboxed

    if checkpoint.status == Checkpoint.PRUNED:
        raise ValueError(f"{checkpoint.prefix} was pruned: its files are gone")
    if not checkpoint.on_disk:
        raise ValueError(f"the files of {checkpoint.prefix} are gone ({checkpoint.gone_reason})")
    if checkpoint.v1_refusal:
        raise ValueError(checkpoint.v1_refusal)
    with readable(checkpoint, action="Verifying a checkpoint") as local:
        result = run_sandboxed(restore.verify_checkpoint, local.path, limits=sandbox_limits(checkpoint),
                               on_progress=_progress_span(on_progress, 0, 80))
        result.message = local.shown(result.message)
        restored = _restore_check(checkpoint, local, output, _progress_span(on_progress, 80, 100)) if result.ok else None
    if result.status == restore.UNREADABLE:
        # Not a verdict on the checkpoint: keep its status and the last verification's findings.
        verification = {
            **{k: v for k, v in (checkpoint.verification or {}).items() if k != "read_error"},
            "status": checkpoint.status,
            "read_error": {
                "message": result.message,
                "failed_tensor": result.failed_tensor,
                "checked_at": timezone.now().isoformat(),
            },
        }
        verification.setdefault("message", "Not verified yet.")
        checkpoint.verification = verification
        checkpoint.save(update_fields=["verification"])
        return verification
    verification = {
        "status": result.status,
        "message": result.message,
        "failed_tensor": result.failed_tensor,
        "bytes_read": result.bytes_read,
        "seconds": round(result.seconds, 3),
        "checked_at": timezone.now().isoformat(),
        "variables": [asdict(v) for v in result.variables],
    }
    if restored is not None:
        verification["restore"] = restored
    # restore's statuses are named like ours: verified, corrupt, incomplete, missing.
    was_corrupt = checkpoint.status == Checkpoint.CORRUPT
    checkpoint.status, checkpoint.verification = result.status, verification
    with transaction.atomic():
        checkpoint.save(update_fields=["status", "verification"])
        summaries.refresh(checkpoint.run_id)
    if result.status == Checkpoint.CORRUPT and not was_corrupt:
        webhooks.emit(webhooks.CHECKPOINT_CORRUPT, checkpoint)
    return verification


def partial_restore(checkpoint: Checkpoint, *, recipe_path: str, variables: list[str] | None = None,
                    name_map: dict[str, str] | None = None) -> dict:
    """Restore a subset of this checkpoint into a fresh graph of ``recipe_path`` (transfer learning).

    ``variables`` are graph variable names (None: all); ``name_map`` maps a graph variable to
    the checkpoint key it is read from. Reports what was restored, what was left initialised
    and what did not fit (absent, other shape or dtype). Writes nothing. Imports TensorFlow.
    Raises ``ValueError`` (``UnknownNameError`` naming close matches) for bad names.
    """
    from persistence import restore
    from persistence.recipes import RecipeError, load_recipe
    from persistence.sandbox import run_sandboxed

    if checkpoint.status in Checkpoint.GONE:
        raise ValueError(f"{checkpoint.prefix} is {checkpoint.status}: its files are gone")
    if checkpoint.v1_refusal:
        raise ValueError(checkpoint.v1_refusal)
    try:
        load_recipe(recipe_path)
    except RecipeError as exc:
        raise ValueError(str(exc)) from None
    # The recipe builds the graph: a run in a bucket needs only the index and data staged.
    with readable(checkpoint, action="Restoring a checkpoint", with_meta=False) as local:
        try:
            result = run_sandboxed(restore.partial_restore_with_recipe, local.path, recipe_path,
                                   name_map=name_map or {}, variables=variables or None,
                                   limits=sandbox_limits(checkpoint))
        except Exception as exc:
            # Name the checkpoint in its bucket, not in the staging view that is gone afterwards.
            if local.staged_directory and local.staged_directory in str(exc):
                raise ValueError(local.shown(str(exc))) from None
            raise
    return {"mode": "partial", "recipe": recipe_path, **result.to_dict(), "prefix": checkpoint.path}


def _restore_check(checkpoint: Checkpoint, local: Readable, output: str, on_progress) -> dict:
    from dataclasses import asdict

    from persistence import restore
    from persistence.graphsafety import UnsafeGraphError, load_meta_graph_def
    from persistence.sandbox import SandboxChildError, SandboxError, run_sandboxed

    if checkpoint.format == discovery.TF2:
        return {"ok": None, "note": "TF2 object checkpoint: there is no meta graph to restore into."}
    meta = local.meta
    if meta is None or not os.path.isfile(meta):
        return {"ok": False, "error": "No meta graph: neither this checkpoint nor an earlier one has a .meta."}
    check: dict = {"meta": os.path.basename(meta), "output": output or None}
    try:
        placeholders = restore.placeholder_inputs(load_meta_graph_def(meta).graph_def)
        feed = sample_feed(checkpoint.run, placeholders)
        ran = run_sandboxed(
            restore.restore_and_run, local.path, meta, feed=feed, outputs=[output] if output else [],
            allow_unsafe=checkpoint.run.trusted, on_progress=on_progress, limits=sandbox_limits(checkpoint),
        )
    except (UnsafeGraphError, ValueError, OSError, SandboxError, SandboxChildError) as exc:
        # UnknownNameError is a ValueError; a TensorFlow error that could not cross the process
        # boundary as itself arrives as a SandboxChildError carrying its type and message.
        return {**check, "ok": False, "error": local.shown(str(exc))}
    except restore.RestoreFailed as exc:  # e.g. a graph that does not match the checkpoint
        return {**check, "ok": False, "error": local.shown(str(exc)), "verdict": exc.failure.verdict}
    return {
        **check, "ok": True, "fed": sorted(feed), "zero_filled": ran.zero_filled,
        "outputs": [asdict(s) for s in ran.summaries], "seconds": round(ran.seconds, 3),
    }


def clean_outputs(outputs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(o.strip() for o in outputs if o and o.strip()))


def freeze_target(checkpoint: Checkpoint, outputs: Iterable[str], kind: str = Export.FROZEN_PB) -> Path | str:
    """The path an export of ``outputs`` as ``kind`` writes; raises ``PathOutsideRoots`` if it would escape."""
    suffix = Export.SUFFIXES[kind]
    if checkpoint.format == discovery.TF2:
        return export_path(checkpoint, "serve", suffix)  # the recipe's serve function, whatever is ticked
    return export_path(checkpoint, export_name(clean_outputs(outputs)), suffix)


def running_freeze(checkpoint: Checkpoint, outputs: Iterable[str], *, statuses: Iterable[str] = ("queued", "running"),
                   exclude: Job | None = None, kind: str = Export.FROZEN_PB) -> Job | None:
    """The freeze job (in ``statuses``) that writes the same path as an export of ``outputs`` as ``kind``."""
    target = freeze_target(checkpoint, outputs, kind)
    candidates = (Job.objects.filter(kind=Job.FREEZE, status__in=list(statuses), run_id=checkpoint.run_id)
                  .select_related("checkpoint__run").order_by("created_at"))
    for job in candidates:
        if exclude is not None and job.pk == exclude.pk or job.checkpoint is None:
            continue
        try:
            params = job.params or {}
            if freeze_target(job.checkpoint, params.get("outputs") or [], params.get("kind", Export.FROZEN_PB)) == target:
                return job
        except files.PathOutsideRoots:
            continue
    return None


def check_no_freeze_running(checkpoint: Checkpoint, outputs: Iterable[str], *, exclude: Job | None = None,
                            statuses: Iterable[str] = ("queued", "running"), kind: str = Export.FROZEN_PB) -> None:
    """Raise :class:`FreezeRunning` when a freeze writing the same file is queued or running.

    Call inside a transaction before recording a new freeze: the checkpoint's row lock makes
    the check and the insert one step for concurrent requests (SQLite serialises writers).
    """
    Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).first()
    try:
        other = running_freeze(checkpoint, outputs, statuses=statuses, exclude=exclude, kind=kind)
    except files.PathOutsideRoots:
        return  # the freeze itself refuses the path, with the reason
    if other is not None:
        raise Checkpoint.FreezeRunning(
            f"{checkpoint.prefix}: a freeze writing {str(freeze_target(checkpoint, outputs, kind)).rsplit('/', 1)[-1]} is already "
            f"{other.status} (job #{other.pk}); wait for it to end.", other,
        )


def export_name(outputs: list[str]) -> str:
    """A file-name-safe name for a freeze of ``outputs`` (``probs`` -> ``probs``; scopes -> ``_``)."""
    import re

    from persistence.graphsafety import node_name

    text = "-".join(node_name(o) for o in outputs)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:80] or "frozen"


def export_path(checkpoint: Checkpoint, name: str, suffix: str = ".pb") -> Path | str:
    """``EXPORT_ROOT/<run>/<step>/<name><suffix>``, resolved (a URL when the root is a bucket);
    raises ``PathOutsideRoots`` if it escapes."""
    import re

    step = str(checkpoint.step) if checkpoint.step is not None else re.sub(r"[^A-Za-z0-9_-]+", "_", checkpoint.prefix)
    if bucket := export_storage.bucket_root():
        return export_storage.export_url(bucket, checkpoint.run.name, step, f"{name}{suffix}")
    root = Path(settings.EXPORT_ROOT)
    return files.resolve_inside(root / checkpoint.run.name / step / f"{name}{suffix}", [root])


def freeze(checkpoint: Checkpoint, *, outputs: list[str], clear_devices: bool = True, variables_allowlist: list[str] | None = None,
           variables_denylist: list[str] | None = None, user: User | None = None, on_progress: Progress | None = None,
           job: Job | None = None, kind: str = Export.FROZEN_PB, quantize: bool = False) -> Export:
    """Export into ``EXPORT_ROOT/<run>/<step>/<name><suffix>``, verify it against the checkpoint, record it.

    ``kind``: a frozen ``.pb`` (the default), a SavedModel directory (downloaded as a ``.tar``), a
    ``.tflite`` (``quantize``: dynamic-range) or an ``.onnx``. TF1: ``outputs`` are node names
    of the meta graph (own or meta source's); the recipe's sample input is fed where it fits,
    zeros elsewhere; unsafe ops are refused unless the run is trusted. TF2: the run's recipe
    module is used (``outputs`` must be among its outputs). Raises
    ``persistence.freeze.FreezeError`` or ``UnsafeGraphError`` with a message for users; nothing
    is written at the final path then. Re-exporting the same outputs replaces the export and
    updates its ``Export`` row (downloads keep their id). ``job`` is the freeze job running this,
    if any. Raises :class:`FreezeRunning` while another export writes the same path.
    """
    from persistence import freeze as engine
    from persistence import savedmodel
    from persistence.graphsafety import load_meta_graph_def, node_name
    from persistence.recipes import RecipeError, load_recipe
    from persistence.restore import placeholder_inputs
    from persistence.sandbox import SandboxChildError, SandboxError, run_sandboxed

    if kind not in Export.SUFFIXES:
        raise engine.FreezeError(f"unknown export kind {kind!r}")
    if checkpoint.status in Checkpoint.GONE:
        raise engine.FreezeError(f"{checkpoint.prefix} is {checkpoint.status}: its files are gone")
    if checkpoint.v1_refusal:
        raise engine.FreezeError(checkpoint.v1_refusal)
    try:
        if on_object_storage(checkpoint.run.directory):
            run_location(checkpoint.run.directory)  # its files are staged (and checked) below
        else:
            checkpoint_directory(checkpoint.run.directory, action="Exporting a checkpoint")
            checkpoint.check_files_at_use()
    except ValueError as exc:  # files.UnsafeFile is one
        raise engine.FreezeError(f"run {checkpoint.run.name}: {exc}") from None
    outputs = clean_outputs(outputs)
    # A job was checked when it was started; here only another running one counts (the queued
    # ones start after this). A freeze without a job (the command) also waits for queued ones.
    with transaction.atomic():
        check_no_freeze_running(checkpoint, outputs, exclude=job, kind=kind,
                                statuses=(Job.RUNNING,) if job else (Job.QUEUED, Job.RUNNING))
    tf2 = checkpoint.format == discovery.TF2
    if tf2:
        try:
            recipe = load_recipe(checkpoint.run.recipe_path())
        except RecipeError as exc:
            raise engine.FreezeError(f"TF2 checkpoints are exported through the run's recipe: {exc}") from None
        unknown = [o for o in outputs if node_name(o) not in recipe.output_names]
        if unknown:
            raise engine.FreezeError(
                f"unknown output(s) {', '.join(unknown)}: recipe {recipe.name} serves "
                f"{', '.join(recipe.output_names) or 'nothing'}"
            )
    elif not outputs:
        raise engine.FreezeError("choose at least one output node")
    try:
        target = freeze_target(checkpoint, outputs, kind)
    except files.PathOutsideRoots as exc:
        raise engine.FreezeError(f"export path refused: {exc}") from None
    other = Export.objects.filter(path=str(target)).exclude(checkpoint=checkpoint).select_related("checkpoint").first()
    if other is not None:
        where, name = export_storage.split(str(target))
        raise engine.FreezeError(
            f"{name} in {where} is the export of {other.checkpoint.prefix} (same step): "
            "exporting this checkpoint there would overwrite it"
        )
    owner = f"job{job.pk}" if job is not None else None  # None: the writing process
    with contextlib.ExitStack() as stack:
        # Into a bucket: written and verified in a local workspace first, copied in afterwards.
        url = target if isinstance(target, str) else None
        written = Path(target) if url is None else stack.enter_context(export_storage.workspace(owner)) / Path(url).name
        # An export killed mid-write (kill -9) leaves its temporary file or directory beside the
        # target; nothing else would ever remove it. Only those of writers that have ended go:
        # another export writing into this directory right now keeps its own.
        stale = files.remove_stale_temp_files(written.parent, owner_ended=temp_owner_ended)
        # The child may write only beneath the export directory (and its scratch directory).
        written.parent.mkdir(parents=True, exist_ok=True)
        limits = sandbox_limits(checkpoint, writable=(str(written.parent),))
        try:
            local = stack.enter_context(readable(checkpoint, action="Exporting a checkpoint"))
        except ValueError as exc:
            raise engine.FreezeError(f"run {checkpoint.run.name}: {exc}") from None
        meta = None if tf2 else local.meta
        if tf2:
            sample = recipe.sample_input()
            source = {"recipe_path": checkpoint.run.recipe_path()}
        elif meta is None:
            raise engine.FreezeError(
                f"missing meta graph: {checkpoint.prefix} has no .meta and no earlier checkpoint of run "
                f"{checkpoint.run.name} provides one, so there is no graph structure to export"
            )
        else:
            try:
                sample = sample_feed(checkpoint.run, placeholder_inputs(load_meta_graph_def(meta).graph_def))
            except (OSError, ValueError):
                sample = {}  # the engine says what is wrong with the meta graph
            source = {"meta_path": meta, "outputs": outputs, "allow_unsafe": checkpoint.run.trusted,
                      "clear_devices": clear_devices}
        kwargs = {**source, "sample_feed": sample, "on_progress": on_progress, "limits": limits, "temp_owner": owner}
        if kind == Export.FROZEN_PB and tf2:
            function, args = engine.freeze_tf2_with_recipe, (local.path, str(written))
        elif kind == Export.FROZEN_PB:
            kwargs.update(variables_allowlist=variables_allowlist or None, variables_denylist=variables_denylist or None)
            function, args = engine.freeze_checkpoint, (local.path, kwargs.pop("meta_path"), str(written))
        elif kind == Export.SAVED_MODEL:
            function, args = savedmodel.export_saved_model, (local.path, str(written))
        else:
            function, args = savedmodel.export_file, (kind, local.path, str(written))
            kwargs["quantize"] = quantize
        try:
            result = run_sandboxed(function, *args, **kwargs)
        except (SandboxError, SandboxChildError, engine.FreezeError) as exc:
            raise engine.FreezeError(local.shown(str(exc))) from None
        stored = export_storage.publish(written, url, result.to_dict(), owner=owner) if url else None
    return _record_export(checkpoint, kind, target, result.to_dict(), user=user, sample=sample, meta=meta,
                          stale=stale, clear_devices=clear_devices, variables_allowlist=variables_allowlist,
                          variables_denylist=variables_denylist, stored=stored)


def _record_export(checkpoint: Checkpoint, kind: str, target: Path | str, data: dict, *, user: User | None,
                   sample: dict, meta: str | None, stale: list[str], clear_devices: bool,
                   variables_allowlist: list[str] | None, variables_denylist: list[str] | None,
                   stored: dict | None = None) -> Export:
    from persistence import freeze as engine

    verification = {
        "tolerance": data.get("tolerance", engine.VERIFY_TOLERANCE),
        "sample_inputs": sorted(sample),
        "zero_filled": data["zero_filled"],
        "output_keys": data.get("output_keys") or data.get("signature_outputs") or {},
        "meta": os.path.basename(meta) if meta else None,
        "clear_devices": clear_devices,
        "variables_allowlist": variables_allowlist or [],
        "variables_denylist": variables_denylist or [],
        "unsafe_ops_allowed": data["unsafe_ops_allowed"],
        "stale_temp_files_removed": stale,
        "seconds": round(data["seconds"], 3),
    }
    for extra in ("signature_inputs", "quantized", "top_class_agreement", "content_bytes"):
        if extra in data:
            verification[extra] = data[extra]
    # What the cheap "changed on disk" check compares with later (a directory: its archive's layout).
    written = Export(kind=kind, path=str(target))
    if stored is not None:  # in a bucket: what downloads and re-checks compare the objects with
        mtime_ns = stored.pop("mtime_ns")
        verification.update(stored)
        if written.is_directory:
            verification["archive"] = ARCHIVE_STREAMED
    elif written.is_directory:
        verification["archive"] = ARCHIVE_STREAMED
        mtime_ns = written.archive().st_mtime_ns
    else:
        mtime_ns = os.stat(written.file_path()).st_mtime_ns
    export, _ = Export.objects.update_or_create(
        path=str(target),
        defaults={
            "checkpoint": checkpoint, "kind": kind, "size_bytes": data["size_bytes"], "sha256": data["sha256"],
            "inputs": data["inputs"], "outputs": data["outputs"], "node_count": data.get("node_count", 0),
            "op_histogram": data.get("op_histogram", {}), "max_abs_diff": data["max_abs_diff"],
            "verified": data["verified"], "verification": verification, "created_at": timezone.now(),
            "file_mtime_ns": mtime_ns,
            "created_by": user if getattr(user, "is_authenticated", False) else None,
        },
    )
    webhooks.emit(webhooks.EXPORT_VERIFIED if export.verified else webhooks.EXPORT_FAILED, export)
    return export
