"""Shared plumbing for benchmarks: a throw-away Django environment and the results files.

Every figure is a ratio against a baseline measured in the same run on the same machine (or a
plain value with its target), written to ``bench/results.json`` (name → ``{"value", "baseline",
"ratio", "unit", "target"}``) and rendered as a table in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
GROUP_SECONDS = "bench_group_seconds"  # not a figure: wall and CPU seconds per group of the last runs


# What each figure measures and what it does not; rendered under the table in RESULTS.md. The
# module docstrings have the details.
NOTES = {
    "scan_vs_bare": "First scan of 10,000 tiny checkpoints (rows, state file, every index read) vs "
    "`os.scandir` + `tf.train.list_variables`, both pinned to one core (the bench process, so any reader it "
    "forks, and on PostgreSQL its server process); best of 5 alternating, page cache warm. Not: a cold disk.",
    "scan_vs_bare_two_cores": "The same unpinned: the scan reads in a forked child when a core looks idle, "
    "so the figure depends on what else the machine runs.",
    "sweep_1000_idle_cpu_seconds": "CPU time (getrusage, the sweeping process and its children) of one "
    "periodic sweep over 1,000 runs whose directories did not change, median of 5; baseline: stat each "
    "directory + one UPDATE. Not: the database server's CPU on PostgreSQL, RQ's fork per job, changed runs.",
    "load_history_100k_rps": "The history page of a 100,000-checkpoint run through the README's gunicorn "
    "(4 gthread workers, PostgreSQL, DEBUG=0), 20 closed-loop keep-alive clients for 30 s, logged in as a "
    "viewer; baseline: the same clients fetching a static file. Generator CPU share and server CPU per "
    "request are in results.json. Not: TLS, a proxy, clients on another machine.",
    "load_history_100k_p99_ms": "99th-percentile latency of the same load (p50 beside it).",
    "load_history_100k_errors": "Responses of the same load that were not a 200 showing the newest checkpoint.",
    "load_web_rss_growth_mb": "RSS of the gunicorn workers just after the load minus just before it.",
    "rescan_vs_scan": "Rescan of the unchanged directory (the directory-stamp shortcut lists nothing) vs "
    "the first scan. Not: a directory that changed (see the next figure).",
    "rescan_changed_vs_scan": "Rescan after one checkpoint and a new state file were added among 10,000 "
    "(directory listed, fingerprints compared, one index read) vs the first scan. Not: many new checkpoints.",
    "history_page_100k_queries": "Queries of one history page of a 100,000-checkpoint run (constant, no N+1). "
    "Not: latency under concurrent clients.",
    "compare_vs_bare": "Baseline time / ours for two 1 GiB checkpoints: ours streams blocks; the baseline "
    "reads each variable with `get_tensor` and makes one float32-block pass with float64 sums and BLAS dots "
    "(above 1: ours is faster). Page cache warm; not a cold disk.",
    "compare_peak_rss_mb": "Peak RSS of our compare of the same (bounded by the largest variable, not "
    "the checkpoint), TensorFlow and Django imported.",
    "job_overhead_seconds": "Queue + rows + progress around a small freeze job vs the bare calls.",
    "freeze_vs_bare": "Freeze job through the queue (105 MB of variables) vs the same TensorFlow calls by hand; "
    "medians of interleaved runs.",
    "freeze_peak_rss_ratio": "(Peak RSS of the freeze engine in its own process, TensorFlow imported the way "
    "the worker imports it - the same process after importing TensorFlow and running one tiny session) / "
    "checkpoint size, ~420 MB checkpoint. The peak is the conversion: the restored variables shrinking as "
    "their constants grow, plus one variable's transient copies. Not: the sandbox's fork of a worker (that "
    "child shares its parent's pages).",
    "savedmodel_vs_bare": "SavedModel export of a 105 MB checkpoint by our engine (graph safety check, "
    "restore, signature, Builder, fsync, load back with TensorFlow's v1 SavedModel loader and compare, "
    "sha256 of the reproducible archive hashed from the directory while it is loaded, temporary-directory "
    "rename) vs the same TensorFlow calls in a bare script (loading back with tf.saved_model.load, no "
    "digest); each in its own process after importing TensorFlow; medians of interleaved runs.",
    "tar_download_vs_file": "Download rate of a SavedModel directory's .tar, streamed from the directory "
    "(no archive on disk), vs a single-file export of the same bytes, both through the download view "
    "(in-process, page cache warm). Not: HTTP overhead (see download_vs_nginx); with X-Accel-Redirect the "
    "file goes through nginx while the archive still goes through the application.",
    "download_vs_nginx": "Download of a 1 GiB export from the dashboard as the README deploys it "
    "(gunicorn.conf.py, DEBUG=0) vs nginx serving the same file statically; same curl, page cache warm.",
    "download_accel_vs_nginx": "The same download through deploy/nginx.conf with X-Accel-Redirect (the "
    "dashboard checks, nginx sends) vs nginx serving the file statically.",
    "download_rss_growth_mb": "Server RSS growth during the gunicorn downloads.",
    "live_latency_seconds": "Median over 20 checkpoints of a Saver saving once a second (max_to_keep 2) with "
    "`manage.py watch` running: `.index` written → the run page's change endpoint (asked every 50 ms) moved and "
    "its live partial shows the row; baseline: a bare `watchfiles` loop seeing the `.index` event. Not: the "
    "browser's own up-to-1 s poll interval, nor polling mode (NFS).",
    "api_list_10k_ms": "All 10,000 checkpoints of a run through the API in pages of 500 (20 cursor-following "
    "requests, Bearer token, throttle counted) vs a bare Django view doing the same keyset query and "
    "`json.dumps` of the same fields; in-process, all middleware, DEBUG=0, best of 7. Not: network time.",
    "api_download_vs_page": "A 1 GiB export through the API's download (token) vs the page's download "
    "(session), gunicorn, medians of 15 interleaved pairs. Not: the machine's ceiling (see download_vs_cat).",
    "prune_plan_10k_seconds": "Planning a prune of 10,000 checkpoints from the database, as the preview does.",
    "prune_exec_vs_bare": "Executing a plan deleting 10,000 files vs `os.remove` of the same, caches dropped "
    "before each side (disk-bound; our side's database file is cold too); best of 5 alternating. Each side keeps "
    "its directory, refilled with what the last round deleted (a run's churn, not a fresh copy).",
    "events_vs_bare": "Reading a run's event files from nothing (1,000,000 scalars, 20 tags; TF1 and TF2 "
    "layouts), storing the curves and attaching values to 500 checkpoints vs a bare loop over the same files with "
    "the same TensorFlow record reader collecting the same scalars; best of 3 alternating, page cache warm. "
    "Not: a cold disk.",
    "webhook_emit_scan_overhead": "Recording a first scan of 10,000 checkpoints with no webhook endpoint vs the "
    "same with the emit calls stubbed out; best of 9 alternating. Not: a scan while an endpoint subscribes "
    "(one delivery row per checkpoint, by design), nor index reading.",
    "jobs_scaleout_jobs_per_second": "200 mixed verify / freeze / compare jobs over tiny TF1 checkpoints queued at "
    "once, run by 4 separate `rqworker` processes (WORKER_TF_THREADS=1) plus the scheduler, PostgreSQL + Redis; "
    "ratio against one worker's median rate from jobs_throughput_ratio in the same run. Not: big checkpoints.",
    "jobs_scaleout_defects": "Jobs of every scale-out batch lost, executed other than once (a database trigger logs "
    "every status transition; RQ's per-execution results), left open, ended other than planned, or missing their "
    "product (comparison, export file, verification).",
    "jobs_throughput_ratio": "Jobs/s of 2 workers vs 1 on the same batch (60 mixed jobs, fresh copies, fresh "
    "workers), each worker's TensorFlow on one intra-op and one inter-op thread; medians of 3 alternating pairs. "
    "Not: a dedicated machine (PostgreSQL, Redis and the bench share the two cores).",
    "s3_scan_vs_bare": "First scan of a 1,000-checkpoint run in a bucket (moto's S3 server on loopback: one "
    "listing, the state file, every .index fetched and read, rows stored) vs boto3 listing the prefix and "
    "GETting every .index with a thread pool as wide as ours; medians of alternating repeats. Not: a real "
    "network's latency, S3 throttling.",
    "s3_rescan_requests_per_1k_keys": "Requests (LIST + GET, counted by a client-side botocore hook) of a rescan "
    "of the unchanged run / ceil(keys / 1000), the least possible LIST pages; 1.0 = one LIST per started 1,000 "
    "keys and no GET. Not: time.",
    "prune_exec_page_cache_vs_bare": "The same with everything in the page cache, where unlinking is cheap "
    "and our per-file checks, state-file rewrite and row updates show; a guard, not a design target.",
}


def setup_django(work_dir: Path) -> None:
    """Configure Django against a fresh SQLite database (or ``DATABASE_URL``) under ``work_dir``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["VAR_DIR"] = str(work_dir / "var")
    os.environ["CHECKPOINT_ROOTS"] = str(work_dir / "checkpoints")
    os.environ["EXPORT_ROOT"] = str(work_dir / "exports")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    (work_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def postgres_server_url() -> str:
    """The PostgreSQL server benchmarks make their own databases on: ``BENCH_PG_URL``, else
    ``DATABASE_URL``'s, else the local default (without a database name)."""
    url = os.environ.get("BENCH_PG_URL") or os.environ.get("DATABASE_URL") or ""
    if not url.startswith("postgres"):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return url.rsplit("/", 1)[0]


def fresh_postgres_database(name: str) -> str:
    """Drop and create the database ``name`` (one a benchmark owns) on that server; its URL.

    ``psycopg.OperationalError`` when no server answers."""
    import psycopg

    if name in ("test", "postgres", "template0", "template1") or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise RuntimeError(f"refusing to recreate the database {name!r}: name one for this benchmark only")
    server = postgres_server_url()
    parts = urlsplit(server + "/postgres")
    with psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432, user=parts.username or "postgres",
                         password=parts.password, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def delete_runs(**filters) -> None:
    """Delete the runs matching ``filters`` and their checkpoints between timed rounds.

    The checkpoints go in one statement: the ORM's delete of 10,000 rows (related rows collected
    relation by relation, in batches) takes several times as long as the scan that made them.
    Only for a benchmark's own runs, whose checkpoints nothing else refers to.
    """
    from django.db import connection, transaction

    from dashboard.models import Checkpoint, Run

    with transaction.atomic():
        ids = list(Run.objects.filter(**filters).values_list("pk", flat=True))
        if ids:
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {Checkpoint._meta.db_table} WHERE run_id IN ({', '.join(['%s'] * len(ids))})",
                               ids)
            Run.objects.filter(pk__in=ids).delete()


def work_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="ckpt-bench-"))


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def median_time(func: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(func) for _ in range(repeat))


def entry(value: float, baseline: float | None, unit: str, target: str, **extra) -> dict:
    ratio = (value / baseline) if baseline else None
    return {"value": value, "baseline": baseline, "ratio": ratio, "unit": unit, "target": target, **extra}


def meets(result: dict) -> bool:
    """Check a result against its target string, e.g. 'ratio <= 1.5' or 'value <= 12'."""
    field, op, limit = result["target"].split()
    actual = result[field]
    if actual is None:
        return False
    return actual <= float(limit) if op == "<=" else actual >= float(limit)


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (not: servers it talks to)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_results(new: dict[str, dict], group_seconds: dict[str, dict] | None = None) -> dict[str, dict]:
    """Merge ``new`` into the results file (benchmarks can be run one group at a time), and the
    time each group took under ``GROUP_SECONDS`` (its ``total`` sums the latest of every group)."""
    stored = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    timing = stored.pop(GROUP_SECONDS, {})
    timing.pop("total", None)
    results = stored
    for name, result in new.items():
        results[name] = {**result, "met": meets(result)}
    timing.update(group_seconds or {})
    if timing:
        timing["total"] = {"seconds": round(sum(g["seconds"] for g in timing.values()), 1),
                           "cpu_seconds": round(sum(g["cpu_seconds"] for g in timing.values()), 1)}
    RESULTS_JSON.write_text(json.dumps({**results, GROUP_SECONDS: timing} if timing else results,
                                       indent=2, sort_keys=True) + "\n")
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Each ratio compares against a baseline measured in the same run.",
        "",
        "| benchmark | value | baseline | ratio | unit | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(results.items()):
        fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(
            f"| {name} | {fmt(r['value'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | {r['unit']} "
            f"| {r['target']} | {'yes' if r['met'] else '**no**'} |"
        )
    if timing:
        lines += ["", "## Time each group took", "",
                  "Wall and CPU seconds (CPU: the bench process and the children it waited for; not servers such "
                  "as PostgreSQL). A whole `make bench` is the sum of every group.", "",
                  "| group | wall s | CPU s |", "|---|---|---|"]
        lines += [f"| {group} | {spent['seconds']:.0f} | {spent['cpu_seconds']:.0f} |"
                  for group, spent in sorted(timing.items(), key=lambda item: item[0] == "total")]
    lines += ["", "## What each figure measures", ""]
    lines += [f"- **{name}**: {NOTES[name]}" for name in sorted(results) if name in NOTES]
    lines += ["", "Medians and every repeat are in `results.json` (`spread`, `value_spread`, ...)."]
    RESULTS_MD.write_text("\n".join(lines) + "\n")
    return results
