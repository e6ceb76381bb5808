"""Recording what our own jobs wrote, the moment they wrote it, and metrics attached to checkpoints.

A save job records each checkpoint as the Saver writes it, instead of waiting for the next scan;
the rows it writes follow the same rules as a scan's (the run's row lock, the summary refreshed
in the same transaction; see ``scanning``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from persistence import discovery

from . import summaries, webhooks
from .locks import lock_row
from .models import AuditEvent, Checkpoint, Run

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    from persistence.training import SavedCheckpoint

    User = AbstractBaseUser | AnonymousUser


def record_saved(run: Run, saved: SavedCheckpoint, *, source: Checkpoint | None = None, pruned_note: str = "",
                 actor: User | None = None, found: discovery.DiscoveredCheckpoint | None = None) -> Checkpoint:
    """Record a checkpoint our own job has just written, the moment it is written.

    ``saved`` is a ``persistence.training.SavedCheckpoint``. Rows of the checkpoints the
    Saver's ``max_to_keep`` deleted in that save become ``pruned`` (with ``pruned_note``, and
    an audit event). Reads the new ``.index`` (TensorFlow): call it from a worker. ``found`` is the
    checkpoint as the caller has already described it (a run in a bucket is described from its
    listing, as a scan of it would); otherwise it is described from the run directory.
    """
    if found is None:
        found = discovery.describe_checkpoint(run.directory, saved.prefix, meta_source=saved.meta_source)
    values = {**Checkpoint.discovery_values(found), "metrics": dict(saved.metrics), "recorded_at": timezone.now(),
              "gone_at": None}
    with transaction.atomic():
        # A scan of this run may be storing this very prefix: the run lock orders the two.
        lock_row(run)
        if saved.meta_source:
            values["meta_source_id"] = run.checkpoints.filter(prefix=saved.meta_source).values_list(
                "id", flat=True
            ).first()
        if source is not None:
            values["source_id"] = source.pk
        checkpoint, _ = Checkpoint.objects.update_or_create(run=run, prefix=saved.prefix, defaults=values)
        summaries.record_metric_values(run.pk, [(checkpoint.pk, checkpoint.metrics)])
        webhooks.emit(webhooks.CHECKPOINT_RECORDED, checkpoint)
        gone = run.checkpoints.filter(prefix__in=saved.deleted).exclude(status=Checkpoint.PRUNED)
        gone_rows = list(gone.values_list("id", "size_bytes")) if saved.deleted else []
        if gone_rows:
            note = pruned_note or "Deleted by TensorFlow's Saver (max_to_keep)."
            Checkpoint.objects.filter(pk__in=[pk for pk, _ in gone_rows]).update(
                status=Checkpoint.PRUNED, problems=[note]
            )
            AuditEvent.record(
                "saver_pruned", f"Saver max_to_keep deleted {', '.join(saved.deleted)}", actor=actor, run=run,
                bytes_freed=sum(size for _, size in gone_rows),
                details={"deleted": saved.deleted, "files": saved.deleted_files, "by_save_of": saved.prefix},
            )
        if saved.state_file:
            _point_state_file(run, saved.state_file, checkpoint)
        summaries.refresh(run)
    return checkpoint


def _point_state_file(run: Run, state_file: str, checkpoint: Checkpoint) -> None:
    # The Saver just rewrote ``state_file`` to name ``checkpoint`` as latest.
    for row in run.checkpoints.exclude(latest_in=[]).exclude(pk=checkpoint.pk).only("id", "latest_in"):
        if state_file in row.latest_in:
            Checkpoint.objects.filter(pk=row.pk).update(latest_in=[n for n in row.latest_in if n != state_file])
    checkpoint.latest_in = sorted({*checkpoint.latest_in, state_file})
    Checkpoint.objects.filter(pk=checkpoint.pk).update(latest_in=checkpoint.latest_in)
    if state_file == "checkpoint":
        run.latest_prefix = checkpoint.prefix
        run.save(update_fields=["latest_prefix"])


def record_metrics(run: Run, metrics_by_prefix: dict[str, dict[str, float]]) -> int:
    """Attach training metrics (loss, accuracy, …) to checkpoints by prefix; return rows updated."""
    rows = list(run.checkpoints.filter(prefix__in=metrics_by_prefix).only("id", "prefix", "metrics"))
    for row in rows:
        row.metrics = {**(row.metrics or {}), **metrics_by_prefix[row.prefix]}
    with transaction.atomic():
        Checkpoint.objects.bulk_update(rows, ["metrics"], batch_size=2000)
        summaries.record_metric_values(run.pk, [(row.pk, row.metrics) for row in rows])
    return len(rows)
