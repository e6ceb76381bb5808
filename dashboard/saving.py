"""What a save job's ``max_to_keep`` may delete, and what the save form says about it up front.

TensorFlow's Saver rotates out whatever falls out of its window, including checkpoints the run
protects and checkpoints another trainer or job wrote. A save job therefore gives the Saver a
rotation guard built here: only a checkpoint this job wrote, and that no protection rule keeps
(pinned, exported, aliased, latest in a state file, ``.meta`` source of a checkpoint still on disk), may be
rotated out. Everything else is taken out of the Saver's window instead, so it stays on disk and
the state file stops listing it; deleting it is left to a prune, which shows its plan first.

Pure Python and database reads only: the form calls it from the web process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from persistence import statefile
from persistence.training import WRITE_META_FIRST, RotationGuard, planned_save_steps, preview_rotation

from .models import Alias, Export, Run

NOT_OURS = "not written by this save job"

def protection_reasons(run: Run, prefixes: Iterable[str], *, state_file: str) -> dict[str, str]:
    """``{prefix: why it must stay}`` for those of ``prefixes`` a protection rule keeps.

    ``state_file`` is the one the save rewrites: being its latest is not a reason, since the save
    moves that pointer to the checkpoint it writes. Other state files are read from disk as well
    as from the rows, because a trainer may have moved a pointer since the last scan.
    """
    wanted = set(prefixes)
    if not wanted:
        return {}
    rows = list(run.checkpoints.filter(prefix__in=wanted).only("id", "prefix", "pinned", "pin_reason", "latest_in"))
    by_id = {row.pk: row for row in rows}
    reasons: dict[str, list[str]] = {}
    for row in rows:
        if row.pinned:
            reasons.setdefault(row.prefix, []).append(f"pinned ({row.pin_reason})" if row.pin_reason else "pinned")
    for checkpoint_id in Export.objects.filter(checkpoint_id__in=by_id).values_list("checkpoint_id", flat=True):
        reasons.setdefault(by_id[checkpoint_id].prefix, []).append("has an export")
    for checkpoint_id, name in Alias.objects.filter(checkpoint_id__in=by_id).values_list("checkpoint_id", "name"):
        reasons.setdefault(by_id[checkpoint_id].prefix, []).append(f"alias {name}")
    latest: dict[str, set[str]] = {}
    for row in rows:
        for name in row.latest_in or []:
            latest.setdefault(row.prefix, set()).add(name)
    for name in statefile.find_state_files(run.directory):
        state = statefile.sniff_state_file(run.directory, name)
        if state is not None and state.latest in wanted:
            latest.setdefault(state.latest, set()).add(name)
    for prefix, names in latest.items():
        others = sorted(names - {state_file})
        if others:
            reasons.setdefault(prefix, []).append(f"latest in {', '.join(others)}")
    dependants = (
        run.checkpoints.on_disk().filter(meta_source_id__in=by_id).exclude(id__in=by_id)
        .order_by("meta_source_id", "-step").values_list("meta_source_id", "prefix")
    )
    for source_id, prefix in dependants:
        why = reasons.setdefault(by_id[source_id].prefix, [])
        if not any(r.startswith(".meta needed by") for r in why):
            why.append(f".meta needed by {prefix}")
    return {prefix: "; ".join(why) for prefix, why in reasons.items()}

def rotation_guard(run: Run, *, own: Collection[str], state_file: str) -> RotationGuard:
    """The guard a save job hands to ``persistence.training.train``.

    ``own`` is read at every question (the job adds each checkpoint as it records it), so a
    checkpoint pinned or exported while the job runs is protected from the next save on.
    """

    def guard(prefix: str) -> str | None:
        return _why_it_stays(protection_reasons(run, [prefix], state_file=state_file).get(prefix), prefix in own)

    return guard

@dataclass
class RotationPreview:
    """What the save form says about ``max_to_keep`` before anything is written."""

    max_to_keep: int | None
    planned: list[str]  # prefixes the job will write
    removed: list[str]  # of those, what the rotation deletes (keep_checkpoint_every_n_hours may keep more)
    kept_meta_source: str | None  # the job's first checkpoint, kept for its .meta
    # Existing checkpoints TensorFlow's Saver on its own would delete, with why they stay.
    spared: list[tuple[str, str]] = field(default_factory=list)

    @property
    def keeps_everything(self) -> bool:
        return not self.max_to_keep

def preview(
    run: Run, *, prefix: str, start_step: int, steps: int, save_every: int, max_to_keep: int | None,
    write_meta_graph: str, state_file: str = statefile.DEFAULT_STATE_FILE,
) -> RotationPreview:
    """Simulate the job's rotation over the run as it is now (the same rules the guard applies)."""
    planned = [f"{prefix}-{step}" for step in planned_save_steps(start_step, steps, save_every)]
    if run.in_bucket:
        # The Saver rotates only the job's local working copies there; the bucket loses nothing.
        return RotationPreview(max_to_keep or None, planned, [], None)
    if not max_to_keep:
        return RotationPreview(max_to_keep or None, planned, [], None)
    listed = _listed_on_disk(run.directory, state_file)
    mine = set(planned)
    meta_source = planned[0] if write_meta_graph == WRITE_META_FIRST and len(planned) > 1 else None

    def must_stay(candidate: str) -> bool:
        return candidate not in mine or candidate == meta_source

    removed = preview_rotation(listed, planned, max_to_keep, must_stay)
    by_tensorflow = [p for p in preview_rotation(listed, planned, max_to_keep) if p not in mine]
    protected = protection_reasons(run, by_tensorflow, state_file=state_file)
    spared = [(p, _why_it_stays(protected.get(p), False) or NOT_OURS) for p in by_tensorflow]
    return RotationPreview(max_to_keep, planned, removed, meta_source, spared)

def _why_it_stays(protection: str | None, ours: bool) -> str | None:
    if ours:
        return protection
    return f"{protection}; {NOT_OURS}" if protection else NOT_OURS


def _listed_on_disk(directory: str, state_file: str) -> list[str]:
    # What the Saver's window starts with (the job recovers it the same way).
    try:
        state = statefile.read_state_file(directory, state_file)
    except (statefile.StateFileError, OSError):
        return []
    return [p for p in state.all_prefixes if os.path.exists(os.path.join(directory, p + ".index"))]

GuardFactory = Callable[..., RotationGuard]

__all__ = ["NOT_OURS", "RotationPreview", "preview", "protection_reasons", "rotation_guard"]
