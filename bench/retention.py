"""Retention benchmarks: ``prune_plan_10k_seconds``, ``prune_exec_vs_bare`` and
``prune_exec_page_cache_vs_bare``.

``prune_plan_10k_seconds``: planning a prune of a run with 10,000 checkpoints the way the preview
page and the prune job do it, from the database: the rows query, their conversion to
``CheckpointFacts`` (with the state file's exact times) and the planner. Target: value <= 1.0 s.

``prune_exec_vs_bare``: executing a plan that deletes 5,000 of 10,000 checkpoints (10,000 files)
through ``Run.apply_plan`` (checks, state-file rewrite, deletions, rows marked ``pruned``, audit
event), against the baseline a person would write: ``os.remove`` over the same files. Each side
gets its own fresh copy of the same directory, written back to disk and then evicted from memory
(``drop_caches`` as root, else ``posix_fadvise``: see ``cache_eviction``), so the deletions are
disk-bound, as for checkpoints pruned long after they were written. Target: ratio <= 1.5.
``prune_exec_page_cache_vs_bare``: the same with the copies in the page cache, where unlinking
costs next to nothing and the per-file checks and row updates around it show.
Both: best of ``repeat`` rounds (5 cold, 3 in the page cache), the sides alternating which goes
first; medians and every time in ``spread``. ``engine_only_ratio`` is
``persistence.pruning.execute_plan`` alone (no rows, no audit). What they do not measure: a disk
shared with a running trainer, or file systems other than this machine's.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from bench.harness import entry, median_time, timed

N = 10_000


def _rows_run(work: Path, name: str, n: int):
    """A run of ``n`` recorded checkpoints saved ten minutes apart, as a CheckpointManager records
    them (a state file listing every one with its time), with a loss each and one ``.meta``."""
    from dashboard.models import Checkpoint, Run
    from persistence.statefile import write_state_file

    directory = work / "checkpoints" / name
    directory.mkdir(parents=True)
    run = Run.objects.create(name=name, directory=str(directory))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    prefixes = [f"model.ckpt-{s}" for s in range(1, n + 1)]
    rows = []
    for step, prefix in enumerate(prefixes, 1):
        files = [{"name": f"{prefix}.index", "size": 250}, {"name": f"{prefix}.data-00000-of-00001", "size": 4096}]
        if step == 1:
            files.append({"name": f"{prefix}.meta", "size": 30_000})
        rows.append({
            "run_id": run.pk, "prefix": prefix, "step": step, "saved_at": base + dt.timedelta(minutes=10 * step),
            "status": Checkpoint.PRESENT, "files": files, "has_own_meta": step == 1,
            "size_bytes": sum(f["size"] for f in files), "metrics": {"loss": 1 / step, "accuracy": step / n},
            "latest_in": ["checkpoint"] if step == n else [], "recorded_at": base,
        })
    Checkpoint.objects.insert_many(rows)
    run.checkpoints.update(meta_source=run.checkpoints.get(prefix=prefixes[0]))
    times = {p: (base + dt.timedelta(minutes=10 * s)).timestamp() for s, p in enumerate(prefixes, 1)}
    write_state_file(str(directory), latest=prefixes[-1], all_prefixes=prefixes, timestamps=times,
                     last_preserved_timestamp=times[prefixes[0]] - 1)
    run.state_files = [{"name": "checkpoint", "latest": prefixes[-1], "problem": None}]
    run.last_preserved_timestamp = times[prefixes[0]] - 1
    run.max_to_keep, run.keep_checkpoint_every_n_hours, run.keep_every_n_steps = 5, 2.0, 1000
    run.keep_best_n, run.best_metric, run.min_age_seconds = 3, "loss", 600
    run.save()
    return run


def plan_10k(work: Path, n: int = N) -> dict[str, dict]:
    from dashboard import retention
    from dashboard.models import Run

    run = _rows_run(work, "plan-10k", n)
    plan = retention.plan_retention(Run.objects.get(pk=run.pk))
    assert len(plan.decisions) == n and 0 < plan.kept_count < n // 10, plan.kept_count
    # A fresh Run row each time, as a request or a job loads it.
    seconds = median_time(lambda: retention.plan_retention(Run.objects.get(pk=run.pk)), repeat=5)
    return {"prune_plan_10k_seconds": entry(seconds, None, "s", "value <= 1.0", checkpoints=n,
                                            kept=plan.kept_count)}


def _drop_caches(directory: str) -> str:
    """Evict ``directory``'s files (and, where allowed, every cached dentry and inode) from memory.

    As root: ``sync`` then ``echo 3 > /proc/sys/vm/drop_caches``, a truly cold start. Otherwise
    each file's pages are dropped with ``posix_fadvise(DONTNEED)``; directory entries and inodes
    stay cached then, so that regime is only partly cold. Returns which one was used.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return "drop_caches"
    except OSError:
        for item in os.scandir(directory):
            fd = os.open(item.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "posix_fadvise DONTNEED (drop_caches not permitted)"


def _measure_exec(work: Path, template: Path, tag: str, *, cold: bool, bare_first: bool) -> dict:
    """One round: each side deletes the plan's files from its own fresh copy of ``template``.

    Each copy is made and written back (``os.sync``) just before that side is timed, as a prune
    finds checkpoints older than ``min_age_seconds``. ``cold`` then evicts it from memory, so
    the deletions go to the disk; otherwise the files and their inodes are in the page cache.
    """
    from dashboard import pruning, retention, scanning
    from dashboard.models import Run
    from persistence.pruning import execute_plan
    from persistence.statefile import find_state_files

    scanned = work / "checkpoints" / f"scan-{tag}"
    shutil.copytree(template, scanned)
    run = Run.objects.create(name=f"exec-{tag}", directory=str(scanned), max_to_keep=5, keep_every_n_steps=2,
                             min_age_seconds=0)
    scanning.scan(run)
    plan = retention.plan_retention(run)
    names = list(plan.files_to_delete)
    regime = {}

    def fresh(side: str) -> str:
        target = work / "checkpoints" / f"{side}-{tag}"
        shutil.copytree(template, target)  # copy2: the same names, sizes and times as the scanned rows
        os.sync()
        if cold:
            regime["cache"] = _drop_caches(str(target))
        return str(target)

    def bare() -> None:
        directory = fresh("bare")
        dirs["bare"] = directory
        seconds["bare"] = timed(lambda: [os.remove(os.path.join(directory, name)) for name in names])

    def product() -> None:
        run.directory = fresh("product")
        Run.objects.filter(pk=run.pk).update(directory=run.directory)
        dirs["product"] = run.directory
        seconds["product"] = timed(lambda: pruning.apply_plan(run, plan))

    def engine() -> None:
        directory = fresh("engine")
        dirs["engine"] = directory
        seconds["engine"] = timed(lambda: execute_plan(directory, plan, state_files=find_state_files(directory)))

    seconds: dict[str, float] = {}
    dirs: dict[str, str] = {}
    for side in ((bare, product, engine) if bare_first else (product, bare, engine)):
        side()
    assert set(os.listdir(dirs["bare"])) == set(os.listdir(dirs["product"])) == set(os.listdir(dirs["engine"]))
    for directory in (scanned, *dirs.values()):
        shutil.rmtree(directory)
    return {**seconds, "deleted": plan.deleted_count, "files": len(names), **regime}


def exec_vs_bare(work: Path, n: int = N, repeat: int = 5, page_cache_repeat: int = 3) -> dict[str, dict]:
    import statistics

    import tensorflow as tf  # noqa: F401  (the scans read indexes; the import is not measured)

    from tests.checkpoint_factory import make_many_tiny_checkpoints

    template = work / "template"
    make_many_tiny_checkpoints(template, n)
    rounds: dict[str, list[dict]] = {"cold": [], "page_cache": []}
    for attempt in range(repeat):
        # The page-cache figure is a guard (ratio <= 5) whose rounds spread by a fifth: three do.
        # Each round's set-up (copies, a scan of every checkpoint) costs far more than its timing.
        for regime in rounds if attempt < page_cache_repeat else ["cold"]:
            # Which side goes first alternates, so that neither always follows the other's writeback.
            rounds[regime].append(_measure_exec(work, template, f"{regime}-{attempt}", cold=regime == "cold",
                                                bare_first=attempt % 2 == 0))
    sides = ("bare", "product", "engine")
    best = {regime: {side: min(r[side] for r in results) for side in sides} for regime, results in rounds.items()}
    spread = {regime: {side: {"median": statistics.median(r[side] for r in results),
                              "all": [round(r[side], 4) for r in results]} for side in sides}
              for regime, results in rounds.items()}
    first = rounds["cold"][0]
    assert first["deleted"] == n // 2 - 2, first["deleted"]  # the odd steps but the newest
    cold, cache = best["cold"], best["page_cache"]
    common = dict(checkpoints_deleted=first["deleted"], files_deleted=first["files"],
                  statistic="best of repeat, sides alternating")
    return {
        "prune_exec_vs_bare": entry(
            cold["product"], cold["bare"], "s", "ratio <= 1.5", **common, repeat=repeat, cache_eviction=first["cache"],
            engine_only_ratio=cold["engine"] / cold["bare"], spread=spread["cold"],
        ),
        "prune_exec_page_cache_vs_bare": entry(
            cache["product"], cache["bare"], "s", "ratio <= 5", **common, repeat=min(repeat, page_cache_repeat),
            engine_only_ratio=cache["engine"] / cache["bare"], spread=spread["page_cache"],
        ),
    }


def run(work: Path) -> dict[str, dict]:
    return {**plan_10k(work), **exec_vs_bare(work)}
