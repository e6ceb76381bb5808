"""Moving a run's aliases (``prod``, ``canary``, ...) between its checkpoints, and their history.

Every move happens under the run's row lock (so a prune that already planned sees it, as it sees a
pin) and is audited with who moved it from which step to which. An aliased checkpoint is never
deleted: the retention plan keeps it ("kept: alias prod"), the prune re-checks before deleting,
and a save's Saver rotation leaves it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import serving
from .locks import lock_row
from .models import Alias, AuditEvent, Checkpoint, Run
from .models.alias import ALIAS_NAME
from .pruning import check_no_prune_running

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _step(checkpoint: Checkpoint | None) -> str:
    if checkpoint is None:
        return "nothing"
    return f"step {checkpoint.step}" if checkpoint.step is not None else checkpoint.prefix


def set_alias(run: Run, name: str, checkpoint: Checkpoint, *, actor: User | None = None) -> Alias:
    """Point ``run``'s alias ``name`` at ``checkpoint`` (creating it), audited. ``ValueError`` for users."""
    name = (name or "").strip().lower()
    try:
        ALIAS_NAME(name)
    except ValidationError as exc:
        raise ValueError(f"alias {name!r}: {exc.messages[0]}") from None
    if checkpoint.run_id != run.pk:
        raise ValueError(f"{checkpoint.prefix} is not a checkpoint of run {run.name}")
    if not checkpoint.on_disk:
        raise ValueError(f"{checkpoint.prefix} is {checkpoint.status}: an alias must point at a checkpoint on disk")
    with transaction.atomic():
        lock_row(run)
        check_no_prune_running(run, "move an alias")
        alias = Alias.objects.select_related("checkpoint").filter(run=run, name=name).first()
        before = alias.checkpoint if alias is not None else None
        if alias is None:
            alias = Alias(run=run, name=name)
        elif before.pk == checkpoint.pk:
            return alias
        alias.checkpoint, alias.updated_at = checkpoint, timezone.now()
        alias.updated_by = actor if getattr(actor, "is_authenticated", False) else None
        alias.save()
        AuditEvent.record(
            "alias", f"Alias {name} of {run.name}: {_step(before)} → {_step(checkpoint)}", actor=actor, run=run,
            checkpoint=checkpoint,
            details={"alias": name, "from_step": before.step if before else None, "to_step": checkpoint.step,
                     "from_checkpoint": before.pk if before else None, "to_checkpoint": checkpoint.pk},
        )
    serving.refresh_labels(run)  # TF Serving's labels follow the aliases
    return alias


def remove_alias(run: Run, name: str, *, actor: User | None = None) -> None:
    """Delete ``run``'s alias ``name`` (audited); its checkpoint is then up to the retention policy."""
    with transaction.atomic():
        lock_row(run)
        alias = Alias.objects.select_related("checkpoint").filter(run=run, name=name).first()
        if alias is None:
            raise ValueError(f"run {run.name} has no alias {name!r}")
        before = alias.checkpoint
        alias.delete()
        AuditEvent.record("alias", f"Alias {name} of {run.name}: {_step(before)} → removed", actor=actor, run=run,
                          checkpoint=before,
                          details={"alias": name, "from_step": before.step, "to_step": None,
                                   "from_checkpoint": before.pk, "to_checkpoint": None})
    serving.refresh_labels(run)


def alias_history(run: Run, limit: int = 50) -> list[AuditEvent]:
    """The run's alias moves, newest first."""
    return list(run.audit_events.filter(action="alias").select_related("actor")[:limit])


def aliases_by_checkpoint(run: Run) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for checkpoint_id, name in Alias.objects.filter(run=run).values_list("checkpoint_id", "name"):
        found.setdefault(checkpoint_id, []).append(name)
    return found
