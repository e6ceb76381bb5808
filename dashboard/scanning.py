"""Scanning: reconciling what is on disk in a run's directory into checkpoint rows.

Scans, save jobs recording what they wrote, and state-file refreshes all write rows of one run;
each store happens in a short transaction under the run's row lock (``locks.lock_row``), so that
writers of one run see each other's work before they write, and none waits for a whole scan.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import time
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from persistence import bucket_discovery, discovery

from . import event_metrics, summaries, webhooks
from .locks import lock_row
from .models import Checkpoint, Run
from .pruning import running_prune
from .roots import on_object_storage, run_location

# A scan stores what it read every this many rows or seconds, whichever comes first: one
# transaction (and on SQLite one commit to sync) per discovery chunk of 250 cost a first scan
# a fifth of its time, and a writer waiting on the run lock waits for one such store only.
SCAN_STORE_ROWS = 2500
SCAN_STORE_SECONDS = 1.0
SUMMARY_REFRESH_SECONDS = 2.0
# A CheckpointManager deletes a rotated checkpoint's files before it rewrites the state file
# without it: a scan in between finds it missing. A row that went missing this recently becomes
# rotated once the state file drops it; one missing for longer vanished for another reason.
ROTATION_RACE_SECONDS = 5.0
# Up to this many new rows a store looks their prefixes up directly; above it, counting the run's
# rows first is cheaper (see _store_chunk).
LOOK_UP_NEW_ROWS = 100
_PREFIX = operator.attrgetter("prefix")


def scan(run: Run, *, full: bool = False, now: dt.datetime | None = None) -> dict:
    """Rescan the directory and record what was found; return counts of what changed.

    When the directory has not changed since the last scan (see ``discovery.directory_stamp``)
    no checkpoint is listed or read, unless ``full``. Either way, what trainers appended to
    TensorBoard event files is read (``event_metrics``). Imports TensorFlow when an index or an
    event file must be read. Checkpoints are stored chunk by chunk as discovery describes them; with thousands to read
    and a processor to spare, discovery reads in a forked child meanwhile (it never touches
    this process's database connection; see ``discovery.describe_chunks``).
    """
    run_location(run.directory)  # the root list may have changed since registration
    in_bucket = on_object_storage(run.directory)
    entries = folders = None
    if in_bucket:
        # A bucket has no directory stamp: the listing (one LIST per 1,000 keys) is the stamp,
        # and an unchanged one ends the scan without a single GET.
        entries, folders = bucket_discovery.list_entries_and_folders(run.directory)
        stamp = discovery.entries_stamp(entries)
    else:
        stamp = discovery.directory_stamp(run.directory)
    if stamp and stamp == run.directory_stamp and not full:
        return {**rescan_unchanged(run, now=now), "checkpoints": run.checkpoints.on_disk().count()}
    listing = discovery.list_directory(run.directory, roots=settings.CHECKPOINT_ROOTS, entries=entries)
    known = {} if full else known_fingerprints(run)
    # Meta sources first: the checkpoints that restore with them are then inserted linked.
    sources = set(listing.meta_sources.values())
    order = [p for p in listing.prefixes if p in sources] + [p for p in listing.prefixes if p not in sources]
    chunks = _slowed(discovery.describe_chunks(listing, order, known=known))
    with discovery.gc_paused():
        counts, found = record_scan(
            run, chunks, listing.state_files, listing.problems, now=now, stamp=stamp or ""
        )
    if not in_bucket and (not stamp or discovery.directory_stamp(run.directory) != stamp):
        # The directory changed while it was read (a trainer saved): the state files listed
        # at the start may be older than what a save job recorded meanwhile. (No save job writes
        # to a bucket: what changed there is seen by the next scan's listing.)
        refresh_latest(run)
    metrics = _read_events(run, top=(entries, folders) if in_bucket else None)
    return {
        **counts, "unchanged_directory": False, "checkpoints": found,
        "problems": [*listing.problems, *metrics["event_problems"]], "metric_points": metrics["metric_points"],
    }


def _read_events(run: Run, *, directory_unchanged: bool = False, top: tuple | None = None) -> dict:
    return event_metrics.read_events(run, directory_unchanged=directory_unchanged, top=top)


def rescan_unchanged(
    run: Run, *, now: dt.datetime | None = None, has_event_files: bool = True, marked: bool = False
) -> dict:
    """The rescan of a run whose directory stamp is what its last scan recorded: nothing to list
    or read but what trainers appended to event files. A sweep over many runs asks once which
    have event files (``has_event_files``) and records the time of all at once (``marked``: see
    ``mark_scanned``)."""
    if not marked:
        mark_scanned([run], now=now or timezone.now())
    # Trainers append to event files in place (and in subdirectories): the stamp does not
    # see that, so they are looked at on every scan; only new bytes are read.
    points = _read_events(run, directory_unchanged=True)["metric_points"] if has_event_files else 0
    return {
        "created": 0, "updated": 0, "missing": 0, "rotated": 0, "unchanged_directory": True,
        "problems": list(run.scan_problems), "metric_points": points,
    }


def mark_scanned(runs: list[Run], *, now: dt.datetime) -> None:
    """Record ``now`` as the last scan of ``runs``: one UPDATE per 500 (on SQLite each is a commit
    to sync, which made an idle sweep of a thousand runs take seconds of waiting)."""
    for start in range(0, len(runs), 500):
        Run.objects.filter(pk__in=[run.pk for run in runs[start : start + 500]]).update(last_scanned_at=now)
    for run in runs:
        run.last_scanned_at = now


def apply_scan(
    run: Run, result: discovery.ScanResult, *, now: dt.datetime | None = None, stamp: str = ""
) -> dict[str, int]:
    """Reconcile a scan of this run's directory into rows; return counts of what changed.

    Unchanged checkpoints (same fingerprint) are not touched, which keeps a rescan of a large
    run to a handful of queries. Rows whose files vanished become ``rotated`` when the trainer
    rotated them out (see ``_rotated_out``), else ``missing``; rows we pruned stay ``pruned``.
    """
    with discovery.gc_paused():
        counts, _ = record_scan(
            run, [result.checkpoints], result.state_files, result.problems, now=now, stamp=stamp
        )
    return counts


def record_scan(
    run: Run,
    chunks: Iterable[list[discovery.DiscoveredCheckpoint]],
    state_files: list[discovery.StateFile],
    problems: list[str],
    *,
    now: dt.datetime | None,
    stamp: str,
) -> tuple[dict[str, int], int]:
    """``apply_scan`` for checkpoints that arrive in chunks (each stored as it comes); also
    returns how many checkpoints were found. ``chunks`` must hold every checkpoint on disk.

    Producing a chunk reads index files (TensorFlow): that happens outside any transaction.
    What was read is then stored in short transactions (every ``SCAN_STORE_ROWS`` rows or
    ``SCAN_STORE_SECONDS``), and the run-wide updates (missing rows, latest flags, the run's
    fields) in a last one, each under the run's row lock, which prunes, saves, pins and other
    scans of the run take too. So a writer waits for one store at most, never for the whole
    scan (on SQLite a long transaction stops every other writer), and what another writer
    did meanwhile is seen before anything is written:
    rows it inserted are not inserted again, rows whose status it changed are not overwritten
    with what this scan read before (see ``Checkpoint.STATUS_TRANSITIONS``).
    """
    now = now or timezone.now()
    latest_by_prefix: dict[str, list[str]] = {}
    for state in state_files:
        if state.latest:
            latest_by_prefix.setdefault(state.latest, []).append(state.name)
    default_state = next((s for s in state_files if s.name == "checkpoint"), None)
    found: dict[str, discovery.DiscoveredCheckpoint] = {}

    # Plain tuples, not model instances: a rescan of a large run must stay a few queries.
    existing = {
        prefix: (pk, status) for pk, prefix, status in run.checkpoints.values_list("id", "prefix", "status")
    }
    ids = {prefix: pk for prefix, (pk, _) in existing.items()}  # and of new rows once inserted
    unlinked: dict[str, list[str]] = {}  # meta source -> new rows inserted before it
    # known_rows: how many rows the run has that this scan knows of (see _store_chunk).
    counts = {"created": 0, "updated": 0, "missing": 0, "rotated": 0, "stale": 0, "known_rows": len(existing)}
    touched: set[str] = set()
    created_at = timezone.now()
    shared: dict = {}  # identical variable lists are encoded once
    pending: list[discovery.DiscoveredCheckpoint] = []
    stored_at = time.monotonic()
    # The summary is an aggregate over all the run's rows: refreshed after every chunk, a first
    # scan of N rows would pay O(N^2). Pages see it at most SUMMARY_REFRESH_SECONDS behind a
    # scan in progress, and exact when the scan ends.
    summary_dirty, summary_at = False, stored_at
    for chunk in itertools.chain(chunks, [None]):  # None: store what is left
        if chunk:
            found.update(zip(map(_PREFIX, chunk), chunk, strict=True))
            pending.extend(chunk)
        if pending and (
            chunk is None or len(pending) >= SCAN_STORE_ROWS
            or time.monotonic() - stored_at >= SCAN_STORE_SECONDS
        ):
            with transaction.atomic():
                lock_row(run)
                before = counts["created"] + counts["updated"]
                _store_chunk(run, pending, existing, ids, unlinked, found, shared, created_at, counts, touched)
                summary_dirty |= counts["created"] + counts["updated"] != before
                if summary_dirty and time.monotonic() - summary_at >= SUMMARY_REFRESH_SECONDS:
                    summaries.refresh(run)
                    summary_dirty, summary_at = False, time.monotonic()
            pending, stored_at = [], time.monotonic()

    gone = [
        p for p, (_, status) in existing.items()
        if p not in found and status not in (Checkpoint.PRUNED, Checkpoint.ROTATED)
    ]
    with transaction.atomic():
        lock_row(run)
        for source, prefixes in unlinked.items():
            if source in ids:
                for start in range(0, len(prefixes), 5000):
                    run.checkpoints.filter(prefix__in=prefixes[start : start + 5000]).update(
                        meta_source_id=ids[source]
                    )
        if gone and running_prune(run) is not None:
            # A prune is deleting files right now: the rows it deletes are its to mark
            # (pruned), not missing. Anything else gone is marked by the next scan.
            counts["stale"] += len(gone)
        else:
            rotated = _rotated_out(run, gone, existing, state_files, found, now=now)
            # Rows already missing when this scan began stay as they are: not written again.
            newly_missing = [p for p in gone if p not in rotated and existing[p][1] != Checkpoint.MISSING]
            for status, prefixes in ((Checkpoint.ROTATED, sorted(rotated)), (Checkpoint.MISSING, newly_missing)):
                for start in range(0, len(prefixes), 5000):
                    rows = (
                        run.checkpoints.filter(prefix__in=prefixes[start : start + 5000])
                        .may_become(status)
                        .exclude(status=status)
                    )
                    counts[status] += rows.update(status=status, gone_at=now)

        _link_meta_sources(run, found, touched=touched)
        mark_latest(run, latest_by_prefix)

        run.format = discovery.directory_format(found.values()) or run.format
        run.latest_prefix = (default_state.latest or "") if default_state else ""
        run.last_preserved_timestamp = default_state.last_preserved_timestamp if default_state else None
        run.state_files = [{"name": s.name, "latest": s.latest, "problem": s.problem} for s in state_files]
        run.scan_problems = list(problems)
        run.last_scanned_at = now
        # Rows left as another writer had them were not reconciled, and an index that could not
        # be read must be read again: either way the next scan must not take the directory as
        # unchanged.
        unreadable = any(f.status == discovery.UNREADABLE for f in found.values())
        run.directory_stamp = "" if counts["stale"] or unreadable else stamp
        # Always, not only when this scan changed rows: a scan that failed after storing some
        # chunks left the summary behind, and the rescan that follows finds those rows known.
        summaries.refresh(run)
        run.save(
            update_fields=[
                "format", "latest_prefix", "last_preserved_timestamp", "state_files",
                "scan_problems", "last_scanned_at", "directory_stamp",
            ]
        )
    counts.pop("known_rows")
    stale = counts.pop("stale")
    if stale:
        counts["left_to_next_scan"] = stale
    return counts, len(found)


def _store_chunk(
    run: Run, chunk: list[discovery.DiscoveredCheckpoint], existing: dict[str, tuple[int, str]],
    ids: dict[str, int], unlinked: dict[str, list[str]], found: dict[str, discovery.DiscoveredCheckpoint],
    shared: dict, created_at: dt.datetime, counts: dict[str, int], touched: set[str],
) -> None:
    """Store checkpoints a scan has read; call under the run's row lock. See ``record_scan``."""
    rows, changed, unreadable = [], [], []
    for found_ckpt in chunk:
        known = existing.get(found_ckpt.prefix)
        if known is None:
            values = Checkpoint.discovery_values(found_ckpt, shared=shared)
            values.update(run_id=run.pk, prefix=found_ckpt.prefix, recorded_at=created_at)
            rows.append(values)
        elif found_ckpt.status == discovery.UNREADABLE:
            # The index could not be read just now (permissions, I/O, memory): that says
            # nothing about the checkpoint, so its status and details stay as they were.
            unreadable.append(Checkpoint(pk=known[0], fingerprint=found_ckpt.fingerprint,
                                         problems=list(found_ckpt.problems)))
        elif not found_ckpt.unchanged:
            # Rows whose files were gone are left out of ``known_fingerprints``, so every row
            # here was re-read by discovery and all its fields are fresh.
            changed.append((known, found_ckpt))
    if rows and (len(rows) <= LOOK_UP_NEW_ROWS or run.checkpoints.count() != counts["known_rows"]):
        # Another scan or a save job may have recorded some of them since ``existing`` was read.
        # Every writer adds rows under the run lock held here, and rows go only with their run:
        # when the run has just the rows this scan knows of, nobody added one, and this look-up
        # (thousands of prefixes to prepare and bind per store) is not needed.
        recorded = dict(
            run.checkpoints.filter(prefix__in=[r["prefix"] for r in rows]).values_list("prefix", "id")
        )
        if recorded:
            ids.update(recorded)
            rows = [r for r in rows if r["prefix"] not in recorded]
            counts["stale"] += len(recorded)
            counts["known_rows"] += len(recorded)
    updated, became_corrupt = [], [r["prefix"] for r in rows if r["status"] == Checkpoint.CORRUPT]
    if changed:
        now_status = dict(
            Checkpoint.objects.filter(pk__in=[pk for (pk, _), _ in changed]).values_list("id", "status")
        )
        for (pk, status), found_ckpt in changed:
            current = now_status.get(pk)
            if current != status or not Checkpoint.may_move(current, found_ckpt.status):
                counts["stale"] += 1  # changed by another writer since this scan read it
                continue
            if found_ckpt.status == Checkpoint.CORRUPT and status != Checkpoint.CORRUPT:
                became_corrupt.append(found_ckpt.prefix)
            updated.append(
                Checkpoint(pk=pk, run=run, prefix=found_ckpt.prefix, gone_at=None,
                           **Checkpoint.discovery_values(found_ckpt))
            )
    detail_fields = [
        "step", "status", "format", "files", "has_own_meta", "size_bytes", "saved_at",
        "variables", "variable_count", "fingerprint", "problems", "gone_at",
    ]
    Checkpoint.objects.bulk_update(updated, detail_fields, batch_size=500)
    Checkpoint.objects.bulk_update(unreadable, ["fingerprint", "problems"], batch_size=500)
    touched.update(r.prefix for r in updated)
    counts["created"] += len(rows)
    counts["known_rows"] += len(rows)
    counts["updated"] += len(updated)
    _insert_linked(run, rows, found, ids, unlinked)
    if rows and webhooks.CHECKPOINT_RECORDED in webhooks.subscribed_events():
        # Checked here too: building the query (thousands of prefixes) costs more than the emit.
        webhooks.emit(webhooks.CHECKPOINT_RECORDED, run.checkpoints.filter(prefix__in=[r["prefix"] for r in rows]))
    webhooks.emit(webhooks.CHECKPOINT_CORRUPT, run.checkpoints.filter(prefix__in=became_corrupt))


def _insert_linked(
    run: Run, rows: list[dict], found: dict[str, discovery.DiscoveredCheckpoint], ids: dict[str, int],
    unlinked: dict[str, list[str]],
) -> None:
    """Insert new rows with their ``meta_source`` set, sources first.

    Setting the link at insert time saves an UPDATE of every dependent row (all checkpoints
    of a ``write_meta_graph=False`` run depend on the first one). ``ids`` maps the prefixes of
    rows already stored to their ids and learns those of new sources; a row whose source is
    not stored yet is noted in ``unlinked`` (source -> prefixes) for the caller to link later.
    """
    sources = [found[r["prefix"]].meta_source for r in rows]
    if sources.count(None) == len(sources):  # no .meta to restore with (never in a TF2 run): no links
        Checkpoint.objects.insert_many(rows)
        return
    new_sources = set(sources) - ids.keys() - {None}
    first = [r for r in rows if r["prefix"] in new_sources]
    if first:
        Checkpoint.objects.insert_many(first)
        stored = run.checkpoints.filter(prefix__in=[r["prefix"] for r in first])
        ids.update(stored.values_list("prefix", "id"))
        # A checkpoint with its own .meta (every source has one) is its own meta source.
        stored.update(meta_source_id=models.F("id"))
    rest = []
    for row, source in zip(rows, sources, strict=True):
        if row["prefix"] in new_sources:
            continue
        if source is not None:
            row["meta_source_id"] = ids.get(source)
            if row["meta_source_id"] is None:
                unlinked.setdefault(source, []).append(row["prefix"])
        rest.append(row)
    Checkpoint.objects.insert_many(rest)


def _link_meta_sources(run: Run, found: dict[str, discovery.DiscoveredCheckpoint], touched: set[str]) -> None:
    # One UPDATE per distinct meta source (usually a single first checkpoint), not one per row.
    dependents: dict[str, list[str]] = {}
    for prefix in touched:
        source = found[prefix].meta_source
        if source:
            dependents.setdefault(source, []).append(prefix)
    if not dependents:
        return
    ids = dict(run.checkpoints.filter(prefix__in=list(dependents)).values_list("prefix", "id"))
    for source, prefixes in dependents.items():
        for start in range(0, len(prefixes), 5000):
            run.checkpoints.filter(prefix__in=prefixes[start : start + 5000]).update(
                meta_source_id=ids.get(source)
            )


def _rotated_out(
    run: Run, gone: list[str], existing: dict[str, tuple[int, str]], state_files: list[discovery.StateFile],
    found: dict[str, discovery.DiscoveredCheckpoint], *, now: dt.datetime,
) -> set[str]:
    """Which of the checkpoints whose files are gone the trainer rotated out itself.

    A Saver's ``max_to_keep`` (and a ``CheckpointManager``) drops the oldest checkpoint from the
    state file's list when it records a newer one, then deletes its files. So: a checkpoint no
    state file lists any more, older than one a state file names as latest and that is on
    disk. Anything else that vanished (files deleted by hand, a state file deleted too, a
    checkpoint newer than the latest) is ``missing``: nothing explains it. A row already missing
    qualifies only within ``ROTATION_RACE_SECONDS``; a directory emptied and then trained into
    again later does not turn its old rows into rotated ones.
    """
    listed = {p for s in state_files for p in [*s.all_prefixes, s.latest] if p}
    newest = [found[s.latest] for s in state_files if s.latest in found]
    candidates = [p for p in gone if p not in listed]
    if not newest or not candidates:
        return set()
    race = now - dt.timedelta(seconds=ROTATION_RACE_SECONDS)
    if any(existing[p][1] == Checkpoint.MISSING for p in candidates):
        # A run can hold many rows missing for long: read only the few that went missing just now.
        recent = set(
            run.checkpoints.filter(status=Checkpoint.MISSING, gone_at__gte=race).values_list("prefix", flat=True)
        )
        candidates = [p for p in candidates if existing[p][1] != Checkpoint.MISSING or p in recent]
    rotated = set()
    for start in range(0, len(candidates), 5000):
        rows = run.checkpoints.filter(prefix__in=candidates[start : start + 5000]).values_list(
            "prefix", "step", "saved_at", "status", "gone_at"
        )
        for prefix, step, saved_at, status, gone_at in rows:
            if status == Checkpoint.MISSING and (gone_at is None or gone_at < race):
                continue  # missing for longer than a scan racing a rotation explains
            if any(
                latest.step > step if latest.step is not None and step is not None
                else latest.saved_at > saved_at.timestamp()
                for latest in newest
            ):
                rotated.add(prefix)
    return rotated


def mark_latest(run: Run, latest_by_prefix: dict[str, list[str]]) -> None:
    # Only the few rows whose flag changes are written: a run has a handful of state files.
    run.checkpoints.exclude(latest_in=[]).exclude(prefix__in=latest_by_prefix).update(latest_in=[])
    for prefix, names in latest_by_prefix.items():
        run.checkpoints.filter(prefix=prefix).update(latest_in=sorted(names))


def refresh_latest(run: Run) -> None:
    """Re-read the run's state files and update which rows are latest (no TensorFlow, no rescan)."""
    from persistence import statefile

    with transaction.atomic():
        # Read under the run lock, like a save job records the state file its Saver wrote: the
        # flags written last are then never older than the file.
        lock_row(run)
        names = statefile.find_state_files(run.directory)
        states = [s for s in (statefile.sniff_state_file(run.directory, n) for n in names) if s is not None]
        latest_by_prefix: dict[str, list[str]] = {}
        for state in states:
            if state.latest:
                latest_by_prefix.setdefault(state.latest, []).append(state.name)
        default = next((s for s in states if s.name == statefile.DEFAULT_STATE_FILE), None)
        mark_latest(run, latest_by_prefix)
        run.latest_prefix = (default.latest or "") if default else ""
        run.last_preserved_timestamp = default.last_preserved_timestamp if default else None
        run.state_files = [{"name": s.name, "latest": s.latest, "problem": s.problem} for s in states]
        run.save(update_fields=["latest_prefix", "last_preserved_timestamp", "state_files"])


def known_fingerprints(run: Run) -> dict[str, str]:
    return dict(
        run.checkpoints.exclude(status__in=Checkpoint.GONE).values_list(
            "prefix", "fingerprint"
        )
    )


def _slowed(chunks: Iterable[list]) -> Iterator[list]:
    delay = getattr(settings, "SCAN_CHUNK_DELAY_SECONDS", 0)
    for chunk in chunks:
        if delay:
            time.sleep(delay)  # fault-injection tests only (settings.SCAN_CHUNK_DELAY_SECONDS)
        yield chunk
