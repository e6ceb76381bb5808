"""Retention: decide which checkpoints of one run to delete and explain why (``persistence.pruning`` carries a plan out).

A checkpoint is deleted only if no rule keeps it (a union, as in Orbax), and every decision carries
every reason that applies, so the preview page can show the user exactly what will happen before
anything is deleted.

``keep_checkpoint_every_n_hours`` follows TensorFlow 2's ``CheckpointManager`` to the letter
(tensorflow/python/checkpoint/checkpoint_management.py, ``__init__`` and ``_sweep``):

* ``_sweep`` returns at once when ``max_to_keep`` is falsy (``None``): everything stays in the
  active set and the preservation anchor is not moved. Our 0/None "keep all" does the same.
* Otherwise checkpoints leave the active set oldest first while more than ``max_to_keep`` remain;
  one that leaves is preserved when ``timestamp - hours * 3600. >= last_preserved``, and then it
  becomes ``last_preserved``. Hours are a float (0.5 works) and a falsy value (0/None) disables the
  rule. Sweeping after every save, as TensorFlow does, visits the same checkpoints in the same
  order with the same anchor as one walk over "all but the newest N", which is what we do.
* A fresh manager's anchor is its construction time minus one second; we have no construction
  time and use the oldest checkpoint's time minus one second (the same when the first save came at
  once). A recovered manager uses the state file's ``last_preserved_timestamp``, clamped to the
  current clock when time went backwards; pass it as ``last_preserved_timestamp``.
  Checkpoints at or before that anchor are never in a recovered manager's active set, so TensorFlow
  never deletes them again ("once preserved ... not deleted by any future CheckpointManager"); we
  keep them too, otherwise a checkpoint TensorFlow preserved (and dropped from the state file's
  list, so its time comes from its ``.index`` mtime, a hair before the anchor) would be deleted by
  the very rule that preserved it.

Which checkpoints count. ``present`` and ``verified`` ones are *healthy*: only they fill the
"newest N" slots, take part in the hours walk and are ranked for "best N". ``incomplete`` and
``corrupt`` ones cannot be restored, so letting one occupy a slot would push a good checkpoint out;
they are kept only by the rules that speak about one checkpoint at a time (pinned, latest, export,
too young — a half-written checkpoint is usually a live trainer still writing — and every K steps),
and otherwise deleted with "deleted: no rule keeps it (incomplete)". ``pruned`` and ``missing``
ones are history: they take no part in the rules, and appear in the plan only when ``files`` still
lists something on disk (typically the ``.meta`` kept for another checkpoint), which is deleted
once nothing needs it.

Ordering. Checkpoints are ordered by step, then time (then prefix, for a total order). When any
checkpoint that takes part has no step (``model.ckpt`` saved without ``global_step``) there is no
step order to follow, and the whole run is ordered by time instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HEALTHY_STATUSES = frozenset({"present", "verified"})
BROKEN_STATUSES = frozenset({"incomplete", "corrupt"})
GONE_STATUSES = frozenset({"pruned", "missing", "rotated"})
KNOWN_STATUSES = HEALTHY_STATUSES | BROKEN_STATUSES | GONE_STATUSES

BEST_MODES = ("min", "max")

# Bumped whenever the meaning of a plan changes, so a plan previewed by an older version of this
# module never matches one computed by a newer one.
_FINGERPRINT_VERSION = "retention-1"


@dataclass(frozen=True)
class CheckpointFacts:
    """What retention needs to know about one checkpoint (the Django side builds these from rows).

    ``files`` are base names inside the run directory: the index, every data shard and the
    checkpoint's own ``.meta``. For ``pruned``/``missing`` checkpoints it lists only what is still
    on disk (usually nothing). ``file_sizes`` (base name -> bytes) is optional; with it the bytes
    freed by a ``.meta``-only keep are exact instead of an upper bound.
    """

    prefix: str
    step: int | None
    saved_at: float
    size_bytes: int
    files: tuple[str, ...]
    meta_file: str | None = None  # own .meta base name, if any
    meta_source: str | None = None  # prefix whose .meta it restores with (may be itself)
    metrics: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False
    pin_reason: str = ""
    is_latest: bool = False  # model_checkpoint_path of any state file
    has_export: bool = False
    aliases: tuple[str, ...] = ()  # names of the run's aliases pointing at it
    status: str = "present"
    file_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RetentionPolicy:
    max_to_keep: int | None = None  # 0/None keeps all
    keep_checkpoint_every_n_hours: float | None = None  # 0/None: off (as in TensorFlow)
    keep_every_n_steps: int | None = None  # 0/None: off
    keep_best_n: int | None = None  # 0/None: off
    best_metric: str | None = None
    best_mode: str = "min"
    min_age_seconds: float = 0
    protect_exported: bool = True

    def validate(self) -> list[str]:
        """Human error messages; empty when the policy can be applied."""
        errors = []

        def count(name: str, value: Any, meaning: str) -> None:
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{name} must be a whole number ({meaning}).")
            elif value < 0:
                errors.append(f"{name} cannot be negative ({meaning}).")

        count("max_to_keep", self.max_to_keep, "0 or empty keeps every checkpoint")
        count("keep_every_n_steps", self.keep_every_n_steps, "0 or empty turns the rule off")
        count("keep_best_n", self.keep_best_n, "0 or empty turns the rule off")
        hours = self.keep_checkpoint_every_n_hours
        if hours is not None and not _is_non_negative_number(hours):
            errors.append("keep_checkpoint_every_n_hours must be a number of hours, 0 or more "
                          "(0 or empty turns the rule off).")
        if not _is_non_negative_number(self.min_age_seconds):
            errors.append("min_age_seconds must be a number of seconds, 0 or more.")
        if self.keep_best_n and not self.best_metric:
            errors.append("keep_best_n needs best_metric: the metric that ranks checkpoints "
                          "(e.g. accuracy or loss).")
        if self.best_mode not in BEST_MODES:
            errors.append(f"best_mode must be 'min' or 'max', not {self.best_mode!r}.")
        return errors


def _is_non_negative_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


@dataclass
class Decision:
    prefix: str
    step: int | None
    keep: bool  # the checkpoint stays restorable
    reasons: list[str]  # every reason that applies, "kept: ..." / "deleted: ..."
    bytes: int  # bytes this decision frees when the plan runs (0 when kept)
    delete_files: list[str]  # base names this decision deletes
    keep_meta_only: bool = False  # deleted, but its .meta stays for a checkpoint that needs it


@dataclass
class Plan:
    decisions: list[Decision]  # one per checkpoint, oldest first
    files_to_delete: list[str]  # sorted base names
    bytes_freed: int
    kept_count: int
    deleted_count: int
    last_preserved_timestamp: float | None  # the hours rule's anchor after the walk
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; :meth:`from_dict` reads it back. (Hand-written: ``asdict`` deep-copies, and
        a plan for 100,000 checkpoints took seconds that way.)"""
        data = dict(vars(self))
        data["decisions"] = [{**vars(d), "reasons": list(d.reasons), "delete_files": list(d.delete_files)}
                             for d in self.decisions]
        data["files_to_delete"] = list(self.files_to_delete)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """The inverse of :meth:`to_dict` (a plan recorded as JSON, executed later by a worker)."""
        values = dict(data)
        values["decisions"] = [Decision(**d) for d in data["decisions"]]
        values["files_to_delete"] = list(data["files_to_delete"])
        return cls(**values)

    @property
    def deleted_prefixes(self) -> set[str]:
        """Checkpoints the plan removes from TensorFlow's view (it deletes their ``.index``)."""
        return {d.prefix for d in self.decisions if d.prefix + ".index" in d.delete_files}


# --- planning ----------------------------------------------------------------------------------


def by_step(checkpoints: list[CheckpointFacts]) -> bool:
    """Whether a plan of ``checkpoints`` lists them by step (every one taking part has a step) or
    by time; its decisions come in ``decision_key`` or ``decision_key_by_time`` order."""
    return all(f.step is not None for f in checkpoints if f.status not in GONE_STATUSES)


def decision_key(step: int | None, saved_at: float, prefix: str) -> tuple:
    return (step if step is not None else -1, saved_at, prefix)


def decision_key_by_time(step: int | None, saved_at: float, prefix: str) -> tuple:
    return (saved_at, step if step is not None else -1, prefix)


def plan_retention(
    checkpoints: Sequence[CheckpointFacts],
    policy: RetentionPolicy,
    *,
    now: float,
    last_preserved_timestamp: float | None = None,
) -> Plan:
    """Decide, for every checkpoint of one run, whether it is kept and why.

    ``now`` is the clock the ``min_age_seconds`` rule (and TensorFlow's clock-went-backwards clamp)
    uses. ``last_preserved_timestamp`` is the state file's value when it has one. Raises
    ``ValueError`` for an invalid policy, duplicate prefixes or an unknown status.
    """
    errors = policy.validate()
    if errors:
        raise ValueError(" ".join(errors))
    by_prefix: dict[str, CheckpointFacts] = {}
    for facts in checkpoints:
        if facts.status not in KNOWN_STATUSES:
            raise ValueError(f"{facts.prefix}: unknown status {facts.status!r}")
        if facts.prefix in by_prefix:
            raise ValueError(f"checkpoint {facts.prefix} is listed twice")
        by_prefix[facts.prefix] = facts

    key = decision_key if by_step(checkpoints) else decision_key_by_time
    ordered = sorted(checkpoints, key=lambda f: key(f.step, f.saved_at, f.prefix))
    healthy = [f for f in ordered if f.status in HEALTHY_STATUSES]
    reasons: dict[str, list[str]] = {f.prefix: [] for f in ordered}

    # max_to_keep: the newest N healthy checkpoints; 0/None keeps all of them.
    n = policy.max_to_keep
    if n:
        newest, older = healthy[-n:], healthy[:-n]
        for f in newest:
            reasons[f.prefix].append(f"kept: newest {n}")
    else:
        older = []
        for f in ordered:
            if f.status not in GONE_STATUSES:
                reasons[f.prefix].append("kept: max_to_keep not set (keeps all)")

    # keep_checkpoint_every_n_hours: TensorFlow's _sweep over the checkpoints leaving the newest N.
    anchor = last_preserved_timestamp
    if anchor is not None and now < anchor:
        anchor = now  # TensorFlow's clamp when the clock went backwards
    recovered_anchor = anchor
    if anchor is None and healthy:
        anchor = min(f.saved_at for f in healthy) - 1.0
    hours = policy.keep_checkpoint_every_n_hours
    if n and hours:
        label = f"kept: preserved every {hours:g} h"
        for f in older:
            if f.saved_at - hours * 3600.0 >= anchor:
                anchor = f.saved_at
                reasons[f.prefix].append(label)
            elif recovered_anchor is not None and f.saved_at <= recovered_anchor:
                reasons[f.prefix].append(f"{label} (saved before the last preserved checkpoint)")

    # keep_best_n: rank healthy checkpoints that have a finite value for the metric; ties go to
    # the newer checkpoint (more training behind it).
    if policy.keep_best_n and policy.best_metric:
        metric, sign = policy.best_metric, (1.0 if policy.best_mode == "min" else -1.0)
        ranked = [(sign * float(f.metrics[metric]), -i, f.prefix)
                  for i, f in enumerate(healthy)
                  if metric in f.metrics and _is_finite(f.metrics[metric])]
        ranked.sort()
        label = f"kept: best {policy.keep_best_n} by {metric} ({policy.best_mode})"
        for _, _, prefix in ranked[: policy.keep_best_n]:
            reasons[prefix].append(label)

    young_label = f"kept: younger than {_duration(policy.min_age_seconds)}"
    for f in ordered:
        why = reasons[f.prefix]
        # A checkpoint from the future (clock skew) counts as young: it may well be in flight.
        if policy.min_age_seconds and now - f.saved_at < policy.min_age_seconds:
            why.append(young_label)
        if f.status in GONE_STATUSES:
            continue
        k = policy.keep_every_n_steps
        if k and f.step is not None and f.step % k == 0:
            why.append(f"kept: every {k} steps")
        if f.pinned:
            why.append(f"kept: pinned ({f.pin_reason})" if f.pin_reason else "kept: pinned")
        if f.is_latest:
            why.append("kept: latest in checkpoint")
        if f.has_export and policy.protect_exported:
            why.append("kept: has export")
        why.extend(f"kept: alias {name}" for name in f.aliases)

    kept = {f.prefix for f in ordered if reasons[f.prefix] and f.status not in GONE_STATUSES}

    # A kept checkpoint that restores with another checkpoint's .meta keeps that file alive. The
    # newest dependant is named: it is the one the user is most likely to restore.
    needed_by: dict[str, list[str]] = {}
    for f in ordered:
        source = f.meta_source
        if (f.prefix in kept and source and source != f.prefix and source in by_prefix
                and by_prefix[source].meta_file):
            needed_by.setdefault(source, []).append(f.prefix)

    decisions = []
    for f in ordered:
        why = reasons[f.prefix]
        dependants = needed_by.get(f.prefix, [])
        if dependants:
            more = f" and {len(dependants) - 1} more" if len(dependants) > 1 else ""
            why.append(f"kept: .meta needed by {dependants[-1]}{more}")
        if f.prefix in kept:
            decisions.append(Decision(f.prefix, f.step, True, why, 0, []))
            continue
        delete, freed = list(f.files), f.size_bytes
        if dependants:
            delete = [name for name in delete if name != f.meta_file]
            if f.meta_file in f.file_sizes:
                freed = max(0, f.size_bytes - f.file_sizes[f.meta_file])
        if f.status in GONE_STATUSES:
            if not f.files:
                continue  # nothing left on disk: history, not part of the plan
            if young_label in why:
                delete, freed = [], 0
            if not delete:  # still needed or too young: nothing to do, but shown
                decisions.append(Decision(f.prefix, f.step, False, why, 0, [],
                                          keep_meta_only=bool(dependants)))
                continue
            why.insert(0, f"deleted: left over from a {f.status} checkpoint")
        elif f.status in BROKEN_STATUSES:
            why.insert(0, f"deleted: no rule keeps it ({f.status})")
        else:  # healthy and not kept: only possible beyond max_to_keep (0/None keeps all)
            why.insert(0, "deleted: beyond max_to_keep")
        decisions.append(Decision(f.prefix, f.step, False, why, freed, deletion_order(delete),
                                  keep_meta_only=bool(dependants)))

    files_to_delete = sorted(name for d in decisions for name in d.delete_files)
    if len(set(files_to_delete)) != len(files_to_delete):
        raise ValueError("two checkpoints claim the same file")
    deleted = [d for d in decisions if not d.keep and d.delete_files]
    return Plan(
        decisions=decisions,
        files_to_delete=files_to_delete,
        bytes_freed=sum(d.bytes for d in deleted),
        kept_count=sum(1 for d in decisions if d.keep),
        deleted_count=len(deleted),
        last_preserved_timestamp=anchor,
        fingerprint=_fingerprint(ordered, policy, last_preserved_timestamp, files_to_delete),
    )


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def deletion_order(names: list[str]) -> list[str]:
    # The .index goes first: TensorFlow (and our discovery) only see a checkpoint through its index,
    # so an interrupted deletion leaves orphan shards that a re-run removes, never a checkpoint
    # that looks restorable but is not.
    def rank(name: str) -> tuple[int, str]:
        if name.endswith(".index"):
            return (0, name)
        if name.endswith(".meta"):
            return (2, name)
        return (1, name)

    return sorted(names, key=rank)


def _fingerprint(ordered: list[CheckpointFacts], policy: RetentionPolicy,
                 last_preserved_timestamp: float | None, files_to_delete: list[str]) -> str:
    """A hash of everything the plan was computed from, plus its outcome.

    ``now`` is left out so that a preview and a re-plan a minute later match when nothing changed;
    the outcome is put in so that they do not match when time alone changed it (a checkpoint
    passed ``min_age_seconds`` and became deletable without the user having seen that).
    """
    facts = [[f.prefix, f.step, f.saved_at, f.size_bytes, f.files, f.meta_file, f.meta_source,
              dict(f.metrics), f.pinned, f.pin_reason, f.is_latest, f.has_export, f.status,
              dict(f.file_sizes), list(f.aliases)] for f in ordered]
    inputs = [_FINGERPRINT_VERSION, asdict(policy), last_preserved_timestamp, facts, files_to_delete]
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["CheckpointFacts", "Decision", "Plan", "RetentionPolicy", "deletion_order", "plan_retention"]
