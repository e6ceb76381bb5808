"""Shared plumbing for benchmarks: a throw-away Django environment and the results files.

Every figure is a ratio against a baseline measured in the same run on the same machine (or a
plain value with its target), written to ``bench/results.json`` (name → ``{"value", "baseline",
"ratio", "unit", "target"}``) and rendered as a table in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


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


def write_results(new: dict[str, dict]) -> dict[str, dict]:
    """Merge ``new`` into the results file (benchmarks can be run one group at a time)."""
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    for name, result in new.items():
        results[name] = {**result, "met": meets(result)}
    RESULTS_JSON.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
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
    RESULTS_MD.write_text("\n".join(lines) + "\n")
    return results
