"""Run the benchmarks and write bench/results.json and bench/RESULTS.md.

    python -m bench            # every group
    python -m bench scan       # one group (results of the others are kept)

The figures are meant for the production setup: without ``DATABASE_URL`` the run gets a fresh
database of its own (``BENCH_DB``, default ``bench_main``, dropped and created) on the PostgreSQL
server of ``BENCH_PG_URL`` (default: the local one) when one answers, else a throw-away SQLite
database (``BENCH_SQLITE=1`` asks for that).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time

from bench import harness

GROUPS = ["scan", "history", "statefile", "compare", "jobs", "exports", "freeze_memory", "retention", "serving",
          "downloads", "scale", "live", "events", "webhooks", "api", "scaleout", "s3", "load", "sweep"]

# The order groups run in, and what runs each: (group, module in bench/, function taking the work
# directory). All share one database: the sweep (of every run, expecting only its own and no job)
# comes first, and the load group after the scale group, to read the data set it left.
RUNNERS = [
    ("sweep", "sweep", "run"), ("scan", "scan", "run"), ("history", "scan", "history_queries"), ("statefile", "statefile", "run"),
    ("compare", "compare", "run"), ("jobs", "jobs", "run"), ("exports", "exports", "run"),
    ("freeze_memory", "exports", "freeze_peak_rss"), ("retention", "retention", "run"),
    ("scale", "scale", "run"), ("downloads", "downloads", "downloads_vs_nginx"), ("serving", "serving", "run"),
    ("live", "live", "run"), ("events", "events", "run"), ("webhooks", "webhooks", "run"), ("api", "api", "run"),
    ("scaleout", "scaleout", "run"), ("s3", "s3", "run"), ("load", "load", "run"),
]

assert sorted(group for group, _, _ in RUNNERS) == sorted(GROUPS), "every group runs, once"


def main(argv: list[str]) -> int:
    groups = argv or GROUPS
    unknown = set(groups) - set(GROUPS)
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
        return 2
    if not os.environ.get("DATABASE_URL") and os.environ.get("BENCH_SQLITE") != "1":
        _use_fresh_postgres()
    work = harness.work_directory()
    new: dict[str, dict] = {}
    seconds: dict[str, dict] = {}
    try:
        harness.setup_django(work)
        for group, module, function in RUNNERS:
            if group not in groups:
                continue
            started, cpu = time.perf_counter(), harness.cpu_seconds()
            try:
                new.update(getattr(importlib.import_module(f"bench.{module}"), function)(work))
            finally:
                seconds[group] = {"seconds": round(time.perf_counter() - started, 1),
                                  "cpu_seconds": round(harness.cpu_seconds() - cpu, 1)}
                print(f"[bench] {group}: {seconds[group]['seconds']} s wall, {seconds[group]['cpu_seconds']} s CPU "
                      "(this process and the children it waited for)", flush=True)
        results = harness.write_results(new, group_seconds=seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in new:
        r = results[name]
        print(f"{name}: value={r['value']:.4g} ratio={r['ratio'] if r['ratio'] is None else round(r['ratio'], 3)} "
              f"target {r['target']} -> {'met' if r['met'] else 'NOT MET'}")
    walls = [f"{group} {spent['seconds']:.0f} s" for group, spent in seconds.items()]
    print(f"groups: {', '.join(walls)}; total {sum(spent['seconds'] for spent in seconds.values()):.0f} s")
    print(f"wrote {harness.RESULTS_JSON} and {harness.RESULTS_MD}")
    return 0


def _use_fresh_postgres() -> None:
    import psycopg

    name = os.environ.get("BENCH_DB", "bench_main")
    try:
        os.environ["DATABASE_URL"] = harness.fresh_postgres_database(name)
    except psycopg.OperationalError as exc:
        print(f"[bench] no PostgreSQL server ({str(exc).strip().splitlines()[0]}): a throw-away SQLite database; "
              "the page and scale figures are then not the production setup's", flush=True)
    else:
        print(f"[bench] database: {name} (fresh) on {harness.postgres_server_url()}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
