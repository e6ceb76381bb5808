"""Retention: a run's policy, what the planner sees of its checkpoints, and the plan it makes.

Reading and planning only (pure Python, safe in the web process); carrying a plan out is
``pruning``. The engine itself, free of Django, is ``persistence.retention``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import TYPE_CHECKING

from django.db import connections, transaction

from persistence import retention as engine

from .models import Alias, AuditEvent, Export, Run

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser


def retention_values(run: Run) -> dict:
    """The run's stored policy, field by field (what the policy form edits and the audit records)."""
    return {name: getattr(run, name) for name in run.RETENTION_FIELDS}


def retention_policy(run: Run, **overrides: object) -> engine.RetentionPolicy:
    """This run's policy as ``persistence.retention`` takes it; ``overrides`` replace single rules
    (``manage.py prune --max-to-keep 3`` …) without changing the stored policy."""
    values = {k: v for k, v in retention_values(run).items() if k != "auto_prune"}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown retention rule(s): {', '.join(unknown)}")
    values.update(overrides)
    values["best_metric"] = values["best_metric"] or None
    return engine.RetentionPolicy(**values)


def update_retention(run: Run, values: dict, *, actor: User | None = None) -> dict:
    """Store a new policy (already validated by ``RetentionPolicyForm``) and audit what changed.

    Returns ``{field: [old, new]}`` for the fields that changed (empty: nothing saved).
    """
    with transaction.atomic():
        before = Run.objects.select_for_update().filter(pk=run.pk).values(*run.RETENTION_FIELDS).get()
        changes = {
            name: [before[name], values[name]]
            for name in run.RETENTION_FIELDS
            if name in values and values[name] != before[name]
        }
        for name, (_, new) in changes.items():
            setattr(run, name, new)
        if changes:
            run.save(update_fields=list(changes))
            text = ", ".join(f"{name} {_shown(old)} → {_shown(new)}" for name, (old, new) in changes.items())
            AuditEvent.record(
                "retention_policy", f"Retention policy of {run.name}: {text}"[:500], actor=actor, run=run,
                details={"changes": changes, "policy": retention_values(run)},
            )
    return changes


def retention_facts(run: Run) -> list[engine.CheckpointFacts]:
    """Every recorded checkpoint of the run as ``CheckpointFacts``: what the planner sees.

    One query for the rows, one for exports and one for aliases. Pruned and missing rows count only through
    files of theirs still on disk (typically a ``.meta`` kept for later checkpoints), so only
    for them is the disk looked at. Times come from the database, which keeps microseconds;
    where a state file records the checkpoint's time (``CheckpointManager``) its exact value is
    used, so that the hours rule compares exactly what TensorFlow compares.
    """
    rows = _retention_rows(run)
    exported = set(Export.objects.filter(checkpoint__run=run).values_list("checkpoint_id", flat=True))
    aliased: dict[int, list[str]] = {}
    for checkpoint_id, name in Alias.objects.filter(run=run).order_by("name").values_list("checkpoint_id", "name"):
        aliased.setdefault(checkpoint_id, []).append(name)
    prefix_of = {row[0]: row[1] for row in rows}
    exact = _state_file_timestamps(run)
    facts = []
    for pk, prefix, step, saved_at, size, files_, source_id, metrics, pinned, reason, latest_in, status in rows:
        sizes = {f["name"]: f["size"] for f in files_ or []}
        if status in engine.GONE_STATUSES and sizes:
            sizes = {n: s for n, s in sizes.items() if os.path.lexists(os.path.join(run.directory, n))}
            size = sum(sizes.values())
        when = saved_at.timestamp()
        recorded = exact.get(prefix)
        if recorded is not None and abs(recorded - when) <= 1e-6:
            when = recorded
        meta = f"{prefix}.meta"
        facts.append(
            engine.CheckpointFacts(
                prefix=prefix, step=step, saved_at=when, size_bytes=size, files=tuple(sizes),
                meta_file=meta if meta in sizes else None, meta_source=prefix_of.get(source_id),
                metrics=metrics or {}, pinned=pinned, pin_reason=reason, is_latest=bool(latest_in),
                has_export=pk in exported, aliases=tuple(aliased.get(pk, ())), status=status, file_sizes=sizes,
            )
        )
    return facts


def _retention_rows(run: Run) -> list[tuple]:
    """The columns retention reads, converted here rather than by the ORM: for 10,000 rows
    Django's per-value converters cost several times the query itself (measured: 0.16 s of CPU
    against 0.03 s), and the preview, the prune job and every auto-prune check plan whole runs."""
    rows = run.checkpoints.values_list(
        "id", "prefix", "step", "saved_at", "size_bytes", "files", "meta_source_id", "metrics", "pinned",
        "pin_reason", "latest_in", "status",
    )
    sql, params = rows.query.sql_with_params()
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchall()

    def column(index: int) -> list:
        # JSON arrives as text (SQLite; PostgreSQL too, by Django's choice): one json.loads per
        # column, not per value, which is where the time went.
        values = [row[index] for row in raw]
        if all(isinstance(v, str) for v in values):
            return json.loads("[" + ",".join(values) + "]")
        return [json.loads(v) if isinstance(v, str | bytes) else v for v in values]

    def moment(value) -> dt.datetime:  # SQLite: naive UTC text; PostgreSQL: an aware datetime
        value = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    files_, metrics, latest = column(5), column(7), column(10)
    return [
        (pk, prefix, step, moment(saved), size, files_[i], source, metrics[i], bool(pinned), reason, latest[i], status)
        for i, (pk, prefix, step, saved, size, _, source, _, pinned, reason, _, status) in enumerate(raw)
    ]


def _state_file_timestamps(run: Run) -> dict[str, float]:
    from persistence.statefile import DEFAULT_STATE_FILE, StateFileError, read_state_file

    names = sorted((s.get("name") for s in run.state_files or [] if s.get("name")),
                   key=lambda n: n != DEFAULT_STATE_FILE, reverse=True)
    exact: dict[str, float] = {}
    for name in names:  # the default state file last, so that its times win (as in discovery)
        try:
            exact.update(read_state_file(run.directory, name).timestamps)
        except (StateFileError, OSError):
            continue
    return exact


def plan_retention(
    run: Run, *, now: float | None = None, policy: engine.RetentionPolicy | None = None,
    facts: list[engine.CheckpointFacts] | None = None,
) -> engine.Plan:
    """Plan a prune from the rows (pure Python: safe in the web process). ``ValueError`` for a bad policy.

    ``facts``: ``retention_facts(run)`` already read (the preview shows them next to the plan).
    """
    return engine.plan_retention(
        retention_facts(run) if facts is None else facts, policy or retention_policy(run),
        now=time.time() if now is None else now, last_preserved_timestamp=run.last_preserved_timestamp,
    )


def plan_report(run: Run, plan: engine.Plan, facts: list[engine.CheckpointFacts]) -> dict:
    """A plan as machines read it (``manage.py prune --json`` and the API's prune preview).

    ``plan`` lists every recorded checkpoint that is on disk; ``leftovers`` the files of pruned or
    missing checkpoints still on disk (a ``.meta`` kept for later checkpoints), which count in
    ``bytes_freed`` when they go.
    """
    on_disk = {f.prefix for f in facts if f.status not in engine.GONE_STATUSES}
    entries = [
        {"prefix": d.prefix, "step": d.step, "keep": d.keep, "reasons": d.reasons, "bytes": d.bytes}
        for d in plan.decisions
    ]
    return {
        "run": run.name,
        "plan": [e for e in entries if e["prefix"] in on_disk],
        "bytes_freed": plan.bytes_freed,
        "leftovers": [e for e in entries if e["prefix"] not in on_disk],
        "fingerprint": plan.fingerprint,
    }


def _shown(value: object) -> str:
    return "—" if value in (None, "") else str(value)
