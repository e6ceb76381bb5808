"""Serving targets: publish verified SavedModel exports as TF Serving versions, label them by alias, prune them.

A version is the checkpoint's step. ``models.config`` of a base path names every target under it,
serves the versions on disk and labels them after the runs' aliases (``prod`` -> the step the
run's ``prod`` alias points at, when that step is published). It is rewritten after every publish,
removal and alias move. Removing versions keeps every labelled one and the newest N, shown first
as a preview with reasons, like checkpoint pruning.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from persistence import files
from persistence import serving as engine

from . import export_storage
from .locks import lock_row
from .models import AuditEvent, Export, Run, ServingTarget
from .models.serving import MODEL_NAME

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def serving_base(path: str) -> str:
    """``path`` resolved, if it is inside ``SERVING_ROOT``; ``ValueError`` otherwise."""
    try:
        return str(files.resolve_inside(path or settings.SERVING_ROOT, [settings.SERVING_ROOT]))
    except files.PathOutsideRoots as exc:
        raise ValueError(f"serving base path refused: {exc} (it must be inside {settings.SERVING_ROOT})") from None


def create_target(run: Run, model_name: str, base_path: str = "", *, keep_newest: int = 3,
                  actor: User | None = None) -> ServingTarget:
    try:
        MODEL_NAME(model_name)
    except ValidationError as exc:
        raise ValueError(f"model name {model_name!r}: {exc.messages[0]}") from None
    base = serving_base(base_path)
    if ServingTarget.objects.filter(base_path=base, model_name=model_name).exists():
        raise ValueError(f"{base} already serves a model named {model_name}")
    target = ServingTarget.objects.create(run=run, model_name=model_name, base_path=base, keep_newest=max(1, keep_newest),
                                         created_by=actor if getattr(actor, "is_authenticated", False) else None)
    AuditEvent.record("serving", f"Serving target {model_name} in {base} for {run.name}", actor=actor, run=run,
                      details={"target": target.pk})
    write_config(base)
    return target


def labels(target: ServingTarget, versions: list[int] | None = None) -> dict[str, int]:
    """Label -> version: the run's aliases whose checkpoint step is published in ``target``."""
    published = set(engine.versions_on_disk(target.base_path, target.model_name) if versions is None else versions)
    return {
        name: step for name, step in target.run.aliases.values_list("name", "checkpoint__step")
        if step is not None and step in published
    }


def write_config(base_path: str) -> str:
    """Rewrite ``models.config`` of ``base_path`` from its targets and what is on disk."""
    entries = []
    for target in ServingTarget.objects.filter(base_path=base_path).select_related("run"):
        versions = engine.versions_on_disk(target.base_path, target.model_name)
        entries.append(engine.ModelEntry(target.model_name, versions, labels(target, versions)))
    return engine.write_models_config(base_path, entries)


def refresh_labels(run: Run) -> None:
    """After an alias of ``run`` moved: rewrite the configs of the base paths it publishes to."""
    for base in set(run.serving_targets.values_list("base_path", flat=True)):
        write_config(base)


def publish(target: ServingTarget, export: Export, *, actor: User | None = None) -> int:
    """Copy a verified SavedModel export into ``target`` as version = its checkpoint's step; audited.

    ``ValueError`` with a message for users when it cannot be published.
    """
    checkpoint = export.checkpoint
    if export.kind != Export.SAVED_MODEL:
        raise ValueError("only a SavedModel export can be published to TF Serving; export one from the checkpoint")
    if not export.verified:
        raise ValueError(f"export #{export.pk} is not verified; only a verified export is published")
    if checkpoint.run_id != target.run_id:
        raise ValueError(f"export #{export.pk} is of run {checkpoint.run.name}, not of {target.run.name}")
    if checkpoint.step is None:
        raise ValueError(f"{checkpoint.prefix} has no step: TF Serving versions are numbers")
    if not export.in_bucket and export.disk_change():
        raise ValueError(f"export #{export.pk} changed on disk since it was verified; check it again first")
    try:
        serving_base(target.base_path)
        with contextlib.ExitStack() as stack:
            # TF Serving reads files: an export in a bucket is staged (checked against what was
            # verified) into a local workspace, and published from there.
            source = (stack.enter_context(export_storage.staged_directory(export)) if export.in_bucket
                      else str(files.resolve_inside(export.path, [settings.EXPORT_ROOT])))
            done = engine.publish_saved_model(source, target.base_path, target.model_name, checkpoint.step)
    except (engine.PublishError, files.PathOutsideRoots, OSError) as exc:
        raise ValueError(str(exc)) from None
    if done:
        AuditEvent.record("publish", f"Published {checkpoint.prefix} as version {checkpoint.step} of "
                          f"{target.model_name}", actor=actor, run=target.run, checkpoint=checkpoint,
                          details={"target": target.pk, "export": export.pk, "version": checkpoint.step})
    write_config(target.base_path)
    return checkpoint.step


def plan_versions(target: ServingTarget) -> list[engine.VersionDecision]:
    return engine.plan_versions(engine.versions_on_disk(target.base_path, target.model_name), labels(target),
                                target.keep_newest)


def prune_versions(target: ServingTarget, *, seen: list[int], actor: User | None = None) -> list[int]:
    """Remove the versions the plan removes, if it still removes exactly ``seen`` (the preview)."""
    with transaction.atomic():
        # Under the run's lock: an alias moved onto a version now keeps it (its label would dangle).
        lock_row(target.run)
        doomed = [d.version for d in plan_versions(target) if not d.keep]
        if sorted(doomed) != sorted(seen):
            raise ValueError("The serving target changed since the preview — preview again.")
        removed = engine.remove_versions(target.base_path, target.model_name, doomed)
        if removed:
            AuditEvent.record("serving-prune", f"Removed versions {', '.join(map(str, removed))} of "
                              f"{target.model_name}", actor=actor, run=target.run,
                              details={"target": target.pk, "versions": removed})
        write_config(target.base_path)
    return removed
