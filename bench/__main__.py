"""Run the benchmarks and write bench/results.json and bench/RESULTS.md.

    python -m bench            # every group
    python -m bench scan       # one group (results of the others are kept)
"""

from __future__ import annotations

import shutil
import sys

from bench import harness

GROUPS = ["scan", "history", "statefile", "compare", "jobs", "exports", "freeze_memory", "retention", "serving",
          "downloads", "scale", "live", "events", "webhooks", "api", "scaleout", "s3", "load", "sweep"]


def main(argv: list[str]) -> int:
    groups = argv or GROUPS
    unknown = set(groups) - set(GROUPS)
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
        return 2
    work = harness.work_directory()
    try:
        harness.setup_django(work)
        from bench import scan

        new = {}
        if "scan" in groups:
            new.update(scan.run(work))
        if "history" in groups:
            new.update(scan.history_queries(work))
        if "statefile" in groups:
            from bench import statefile

            new.update(statefile.run(work))
        if "compare" in groups:
            from bench import compare

            new.update(compare.run(work))
        if "jobs" in groups:
            from bench import jobs

            new.update(jobs.run(work))
        if "exports" in groups:
            from bench import exports

            new.update(exports.run(work))
        if "freeze_memory" in groups:
            from bench import exports

            new.update(exports.freeze_peak_rss(work))
        if "retention" in groups:
            from bench import retention

            new.update(retention.run(work))
        if "scale" in groups:
            from bench import scale

            new.update(scale.run(work))
        if "downloads" in groups:
            from bench import downloads

            new.update(downloads.downloads_vs_nginx(work))
        if "serving" in groups:
            from bench import serving

            new.update(serving.run(work))
        if "live" in groups:
            from bench import live

            new.update(live.run(work))
        if "events" in groups:
            from bench import events

            new.update(events.run(work))
        if "webhooks" in groups:
            from bench import webhooks

            new.update(webhooks.run(work))
        if "api" in groups:
            from bench import api

            new.update(api.run(work))
        if "scaleout" in groups:
            from bench import scaleout

            new.update(scaleout.run(work))
        if "s3" in groups:
            from bench import s3

            new.update(s3.run(work))
        if "sweep" in groups:
            from bench import sweep

            new.update(sweep.run(work))
        if "load" in groups:
            from bench import load

            new.update(load.run(work))
        results = harness.write_results(new)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in new:
        r = results[name]
        print(f"{name}: value={r['value']:.4g} ratio={r['ratio'] if r['ratio'] is None else round(r['ratio'], 3)} "
              f"target {r['target']} -> {'met' if r['met'] else 'NOT MET'}")
    print(f"wrote {harness.RESULTS_JSON} and {harness.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
