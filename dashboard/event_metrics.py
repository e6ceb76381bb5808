"""Metrics from any trainer's TensorBoard event files: read what was appended since the last scan,
store the full curves, and attach values to checkpoints by step.

Every scan calls ``read_events`` (``scanning.scan``), in the worker or the ``scan`` command:
reading imports TensorFlow, and only when a file has grown. Values attached to a checkpoint are
merged into ``Checkpoint.metrics`` (with the step each was logged at in ``metric_steps``), so the
history columns, the chart's checkpoint marks, best-N retention and compare use them unchanged.
A metric our own save job recorded under the same name is kept rather than overwritten: it was
measured on that very checkpoint.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min
from django.utils import timezone

from persistence import bucket_events, events, files, storage

from . import summaries
from .locks import lock_row
from .models import Checkpoint, EventFile, MetricChunk, MetricSeries, Run

# Points per stored chunk (16 bytes each): a million-point run is a few dozen rows per tag at most,
# and appending to a live run rewrites one partly filled chunk, not the curve.
CHUNK_POINTS = 16_384
CHART_POINTS = 2_000
EVENT_PROBLEM = "event file "  # how event-file problems begin among a run's scan problems
# Event files are written by code we do not control: a tag longer than the column, or a run
# logging thousands of distinct scalars (one per layer and step, say), is reported, not stored.
MAX_TAG_LENGTH = 255
MAX_TAGS_PER_RUN = 1000


def read_events(run: Run, *, directory_unchanged: bool = False, top: tuple | None = None) -> dict:
    """Read new scalar points from the run's event files, store them and attach them to
    checkpoints; return ``{"metric_points": new points, "event_problems": [...]}``.

    ``directory_unchanged``: no entry of the run directory was added or removed since the last
    scan (its stamp is the same): only the files and subdirectories where event files were found
    before are looked at, not the directory's thousands of checkpoint files. A subdirectory a
    trainer creates changes the stamp, so it is found by that scan.

    TensorFlow reads the files outside any transaction; what was read is stored in one short
    transaction under the run's row lock, together with each file's new offset, so that a point is
    stored once: a file another scan has stored meanwhile (its offset moved) is left to it.

    A run in a bucket is read through ``persistence.bucket_events``: ``top`` is the run
    directory's listing (objects, subfolder names) the scan just made, so that it is not made twice.
    """
    known = {f.path: f for f in run.event_files.all()}
    if directory_unchanged and not known:
        return {"metric_points": 0, "event_problems": []}
    try:
        refs = _find(run, known, directory_unchanged, top)
    except storage.StorageError as exc:
        return {"metric_points": 0, "event_problems": [f"{EVENT_PROBLEM}listing failed: {exc}"]}
    if not refs and not known:
        return {"metric_points": 0, "event_problems": []}
    reads: list[tuple[events.EventFileRef, EventFile | None, events.EventRead | None, str]] = []
    in_bucket = storage.is_url(run.directory)
    for ref in refs:
        row = known.get(ref.path)
        if row is not None and ref.size == row.size and (
                row.offset == ref.size or row.stuck or (ref.etag and ref.etag == row.etag and not row.problems)):
            continue  # nothing appended since the last read
        state = row.state() if row is not None else events.EventFileState()
        state.problems = [p for p in state.problems if not p.startswith(f"{EVENT_PROBLEM}{ref.path}: cannot be read")]
        try:
            if in_bucket:
                read = bucket_events.read_event_object(run.directory, ref, state)
            else:
                read = events.read_event_file(run.directory, ref, state, roots=settings.CHECKPOINT_ROOTS)
        except (files.UnsafeFile, OSError) as exc:
            reads.append((ref, row, None, f"{EVENT_PROBLEM}{ref.path}: cannot be read ({exc})"))
            continue
        reads.append((ref, row, read, ""))
    stored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if reads or (run.metric_series.exists() and run.checkpoints.filter(metric_steps__isnull=True).exists()):
        with transaction.atomic():
            lock_row(run)
            stored, whole = _store(run, reads)
            _attach(run, stored, whole)
    problems = _note_problems(run, [ref.path for ref in refs], known, reads)
    return {"metric_points": sum(len(s) for s, _ in stored.values()), "event_problems": problems}


def _find(run: Run, known: dict[str, EventFile], directory_unchanged: bool, top: tuple | None) -> list:
    """The run's event files now: on a local disk, or listed in its bucket."""
    if not storage.is_url(run.directory):
        if directory_unchanged:
            return events.find_event_files(run.directory, only={path.split("/")[0] for path in known})
        return events.find_event_files(run.directory)
    own_rows = [f for f in known.values() if "/" not in f.path]
    if not directory_unchanged or any(not f.etag for f in own_rows):
        # (A file whose last read failed has no listed size recorded: list the run again.)
        return bucket_events.find_event_objects(run.directory, top=top)
    # The run's own listing is what the last scan saw: its own event files are as they were then,
    # and only the subfolders where event files were found are listed again.
    own = [events.EventFileRef(f.path, f.size, f.etag) for f in own_rows]
    below = bucket_events.find_event_objects(run.directory, folders={p.split("/")[0] for p in known if "/" in p})
    return sorted([*own, *below], key=lambda ref: (ref.path.rpartition("/")[0], ref.path.rpartition("/")[2]))


def _store(run: Run, reads: list) -> tuple[dict, dict]:
    """Store the points of ``reads`` whose files nobody stored meanwhile; return the new points
    by tag (in the order read) and the whole curves of those tags. Call under the run's row lock."""
    paths = [ref.path for ref, *_ in reads]
    current = {path: offset for path, offset in run.event_files.filter(path__in=paths).values_list("path", "offset")}
    new_points: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    create, update = [], []
    now = timezone.now()
    tags = set(run.metric_series.values_list("tag", flat=True)) if reads else set()
    for ref, row, read, note in reads:
        if current.get(ref.path) != (row.offset if row is not None else None):
            continue  # another scan read and stored this file since this one started
        if read is None:  # kept with the reason, so that every scan tries it again
            if row is None:
                create.append(EventFile(run=run, path=ref.path, problems=[note], read_at=now))
            else:
                row.problems, row.read_at = [note], now
                update.append(row)
            continue
        state, count = read.state, 0
        for tag, (steps, values) in read.points.items():
            if tag not in tags and (len(tag) > MAX_TAG_LENGTH or len(tags) >= MAX_TAGS_PER_RUN):
                note = (f"{EVENT_PROBLEM}{ref.path}: tag {tag[:80]!r} is not stored "
                        f"(tags are kept up to {MAX_TAG_LENGTH} characters, {MAX_TAGS_PER_RUN} per run)")
                if note not in state.problems:
                    state.problems.append(note)
                continue
            tags.add(tag)
            count += len(steps)
            new_points[tag].append((np.frombuffer(steps, dtype=np.int64), np.frombuffer(values, dtype=np.float64)))
        if row is None:
            create.append(EventFile(run=run, path=ref.path, offset=state.offset, size=ref.size, etag=ref.etag,
                                    plugins=state.plugins, problems=state.problems, stuck=state.stuck, points=count,
                                    read_at=now))
        else:
            row.offset, row.size, row.plugins, row.problems = state.offset, ref.size, state.plugins, state.problems
            row.etag = ref.etag
            row.stuck, row.points, row.read_at = state.stuck, row.points + count, now
            update.append(row)
    EventFile.objects.bulk_create(create, batch_size=500)
    EventFile.objects.bulk_update(
        update, ["offset", "size", "etag", "plugins", "problems", "stuck", "points", "read_at"], batch_size=500)
    merged = {}
    for tag, parts in new_points.items():
        steps = np.concatenate([p[0] for p in parts])
        values = np.concatenate([p[1] for p in parts])
        if len(steps):
            merged[tag] = (steps, values)
    return merged, _append(run, merged, now) if merged else {}


def _append(run: Run, new: dict[str, tuple[np.ndarray, np.ndarray]], now) -> dict:
    """Append points to each tag's chunks and recompute its chart copy; return the whole curves."""
    series = {s.tag: s for s in run.metric_series.filter(tag__in=list(new))}
    missing = [MetricSeries(run=run, tag=tag, updated_at=now) for tag in new if tag not in series]
    if missing:
        MetricSeries.objects.bulk_create(missing)
        series.update({s.tag: s for s in run.metric_series.filter(tag__in=[m.tag for m in missing])})
    old: dict[int, list[MetricChunk]] = defaultdict(list)
    growing = [s.pk for s in series.values() if s.chunk_count]
    for chunk in MetricChunk.objects.filter(series_id__in=growing).order_by("series_id", "seq"):
        old[chunk.series_id].append(chunk)
    create, rewrite, whole = [], [], {}
    for tag, (steps, values) in new.items():
        row = series[tag]
        chunks = old.get(row.pk, [])
        parts = [events.unpack(bytes(c.steps), bytes(c.values)) for c in chunks]
        start = 0
        last = chunks[-1] if chunks else None
        if last is not None and last.count < CHUNK_POINTS:
            # Fill the partly filled last chunk first: a live run scanned every minute would
            # otherwise leave a tiny chunk per scan.
            room = CHUNK_POINTS - last.count
            s, v = parts[-1]
            _fill(last, np.concatenate([s, steps[:room]]), np.concatenate([v, values[:room]]))
            rewrite.append(last)
            start = room
        seq = row.chunk_count
        for begin in range(start, len(steps), CHUNK_POINTS):
            chunk = MetricChunk(series=row, seq=seq)
            _fill(chunk, steps[begin : begin + CHUNK_POINTS], values[begin : begin + CHUNK_POINTS])
            create.append(chunk)
            seq += 1
        curve = whole[tag] = events.merge([*parts, (steps, values)])
        chart_steps, chart_values = events.downsample(*curve, CHART_POINTS)
        row.chart_steps, row.chart_values = events.pack(chart_steps, chart_values)
        row.count += len(steps)
        row.chunk_count = seq
        row.first_step, row.last_step = int(curve[0][0]), int(curve[0][-1])
        row.updated_at = now
    MetricChunk.objects.bulk_update(rewrite, ["count", "min_step", "max_step", "steps", "values"], batch_size=50)
    MetricChunk.objects.bulk_create(create, batch_size=50)
    MetricSeries.objects.bulk_update(
        list(series.values()),
        ["chart_steps", "chart_values", "count", "chunk_count", "first_step", "last_step", "updated_at"],
        batch_size=100,
    )
    return whole


def _fill(chunk: MetricChunk, steps: np.ndarray, values: np.ndarray) -> None:
    chunk.steps, chunk.values = events.pack(steps, values)
    chunk.count = len(steps)
    chunk.min_step, chunk.max_step = int(steps.min()), int(steps.max())


def curves(run: Run, *, after_step: int | None = None, tags: list[str] | None = None) -> dict:
    """The run's full curves by tag (sorted by step, a repeated step's last value), only the part
    after ``after_step`` when given (whole chunks: a few points before it may come along)."""
    chunks = MetricChunk.objects.filter(series__run=run)
    if after_step is not None:
        chunks = chunks.filter(max_step__gt=after_step)
    if tags is not None:
        chunks = chunks.filter(series__tag__in=tags)
    parts: dict[str, list] = defaultdict(list)
    for tag, steps, values in chunks.order_by("series_id", "seq").values_list("series__tag", "steps", "values"):
        parts[tag].append(events.unpack(bytes(steps), bytes(values)))
    return {tag: events.merge(p) for tag, p in parts.items()}


def _attach(run: Run, new: dict[str, tuple[np.ndarray, np.ndarray]], whole: dict) -> None:
    """Attach curve values to the checkpoints whose save interval saw new points, and to
    checkpoints not matched yet (new rows). ``whole``: curves already at hand, by tag. Call under
    the run's row lock."""
    if not new and not run.metric_series.exists():
        return
    unmatched = run.checkpoints.filter(metric_steps__isnull=True)
    unmatched.filter(step=None).update(metric_steps={})  # no step, nothing to match by
    lows = [int(steps.min()) for steps, _ in new.values()]
    first_unmatched = unmatched.aggregate(low=Min("step"))["low"]
    if first_unmatched is not None:
        lows.append(first_unmatched)
    if not lows:
        return
    lower = min(lows)
    previous = run.checkpoints.filter(step__lt=lower).aggregate(top=Max("step"))["top"]
    rows = list(run.checkpoints.filter(step__gte=lower).values_list("id", "step", "metrics", "metric_steps"))
    if not rows:
        return
    steps = sorted({step for _, step, _, _ in rows})
    if previous is not None:
        window = previous
    elif len(steps) > 1:
        window = steps[0] - (steps[1] - steps[0])
    else:
        window = None
    others = [tag for tag in run.metric_series.values_list("tag", flat=True) if tag not in whole]
    at_hand = {**(curves(run, after_step=window, tags=others) if others else {}), **whole}
    found = events.attach(at_hand, steps, previous=previous)
    changed = []
    for pk, step, metrics, metric_steps in rows:
        metrics = metrics or {}
        own = {k: v for k, v in metrics.items() if k not in (metric_steps or {})}
        attached = {tag: hit for tag, hit in found[step].items() if tag not in own}
        new_metrics = {**own, **{tag: value for tag, (value, _) in attached.items()}}
        new_steps = {tag: at for tag, (_, at) in attached.items()}
        if metric_steps is None or new_metrics != metrics or new_steps != metric_steps:
            changed.append((pk, new_metrics, new_steps))
    _write_metrics(run, changed)


def _write_metrics(run: Run, changed: list[tuple[int, dict, dict]]) -> None:
    # One parameterised UPDATE per row, sent as one batch: the first read of a long run's event
    # files sets every checkpoint's metrics, and ``bulk_update``'s CASE expressions grow with
    # the batch (minutes for 100,000 rows).
    if not changed:
        return
    ops = connection.ops
    table = ops.quote_name(Checkpoint._meta.db_table)
    sql = f"UPDATE {table} SET {ops.quote_name('metrics')} = %s, {ops.quote_name('metric_steps')} = %s WHERE id = %s"
    with connection.cursor() as cursor:
        cursor.executemany(sql, [
            (ops.adapt_json_value(metrics, None), ops.adapt_json_value(steps, None), pk)
            for pk, metrics, steps in changed
        ])
    summaries.record_metric_values(run.pk, [(pk, metrics) for pk, metrics, _ in changed])


def _note_problems(run: Run, present: list[str], known: dict[str, EventFile], reads: list) -> list[str]:
    """Show the problems of the event files on disk among the run's scan problems (the run page
    lists those)."""
    problems = []
    read = {ref.path: (result, note) for ref, _, result, note in reads}
    for path in present:
        result, note = read.get(path, (None, ""))
        if note:
            problems.append(note)
        elif result is not None:
            problems.extend(result.state.problems)
        elif path in known:
            problems.extend(known[path].problems or [])
    problems = list(dict.fromkeys(problems))
    others = [p for p in run.scan_problems or [] if not p.startswith(EVENT_PROBLEM)]
    if others + problems != list(run.scan_problems or []):
        run.scan_problems = others + problems
        run.save(update_fields=["scan_problems"])
    return problems
