"""Compare benchmarks: ``compare_vs_bare`` and ``compare_peak_rss_mb``.

Two checkpoints of 1 GiB each (four float32 variables of 256 MiB; B = A + noise) are compared
  - by ours: ``manage.py compare A B --json`` (``call_command`` in a fresh process), and
  - by the baseline: what a careful engineer writes by hand, ``reader.get_tensor`` for both sides
    in a loop and, per variable, one pass over float32 blocks of ``BARE_BLOCK`` elements with
    numpy, each block converted to float64 for the sums (norms, difference norm, max abs
    difference, relative change, cosine, NaN/Inf counts). No float64 copy of a whole variable is
    made; BLAS (``@``) does the dot products.

What it does not measure: the first read from disk (both sides read from the page cache), and
the baseline holds one whole variable of each side in memory (``get_tensor`` has no streaming
read); ours streams, which ``compare_peak_rss_mb`` checks.
Each run is a fresh subprocess, so its peak RSS is its own. TensorFlow (and Django, for ours) are
imported before the clock starts: a worker preloads TensorFlow, and the import is no part of
either side's work. The page cache is warmed first and the sides alternate; medians are kept.

    python -m bench compare
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import BENCH_DIR, entry

N_VARIABLES = 4
VARIABLE_ELEMENTS = 64 << 20  # float32: 256 MiB each, 1 GiB per checkpoint
REPEAT = 2  # each side a process reading 2 GiB; the margin is wide (measured 1.27 against >= 0.7)
REPO = BENCH_DIR.parent


def make_checkpoints(directory: Path) -> tuple[str, str, int]:
    """Write checkpoints A and B with ``SaveV2`` (no graph, no optimizer); return prefixes and largest variable bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"layer_{i}/kernel" for i in range(N_VARIABLES)]
    prefixes = [str(directory / "big.ckpt-1000"), str(directory / "big.ckpt-2000")]
    # One variable at a time per file would need a merge step; holding one checkpoint's arrays
    # (1 GiB) in this parent process is fine, the measured processes are the children.
    arrays = [rng.standard_normal(VARIABLE_ELEMENTS, dtype=np.float32) for _ in names]
    for k, prefix in enumerate(prefixes):
        if k:
            for i, array in enumerate(arrays):
                array += np.float32(10.0 ** -(i + 1)) * rng.standard_normal(VARIABLE_ELEMENTS, dtype=np.float32)
        tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
            tensors=[tf.constant(a.reshape(8192, -1)) for a in arrays],
        )
    return prefixes[0], prefixes[1], VARIABLE_ELEMENTS * 4


def _child(args: list[str]) -> dict:
    proc = subprocess.run(
        # One BLAS thread: the baseline's dot products are memory-bound, and OpenBLAS's threads
        # fight the rest of a loaded two-core machine (one run took 46 s against ours' 12 s),
        # which would flatter ours. Ours does not use BLAS, so the setting changes only the baseline.
        [sys.executable, "-m", "bench.compare", *args], cwd=REPO, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {args[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(work: Path) -> dict[str, dict]:
    from django.core.management import call_command

    from dashboard.models import Run

    directory = work / "checkpoints" / "big"
    try:
        made = _child(["make", str(directory)])  # in a child: this process stays small
        path_a, path_b, largest = made["a"], made["b"], made["largest"]
        call_command("scan", str(directory), "--name", "compare-big", stdout=open(os.devnull, "w"))  # noqa: SIM115
        run = Run.objects.get(name="compare-big")  # not "big": the scale group's data set has that run
        a = run.checkpoints.get(prefix=os.path.basename(path_a))
        b = run.checkpoints.get(prefix=os.path.basename(path_b))
        size = a.size_bytes + b.size_bytes
        assert min(a.size_bytes, b.size_bytes) >= 1_000_000_000, (a.size_bytes, b.size_bytes)

        _child(["bare", path_a, path_b])  # warm the page cache for both sides alike
        ours, bare = [], []
        for _ in range(REPEAT):
            ours.append(_child(["ours", str(a.pk), str(b.pk)]))
            bare.append(_child(["bare", path_a, path_b]))
        for name, expected in bare[0]["numbers"].items():  # the same work, the same answers
            got = ours[0]["numbers"][name]
            for key, value in expected.items():
                assert abs(got[key] - value) <= 1e-6 * max(abs(value), 1e-12), (name, key, got[key], value)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    ours_s = statistics.median(r["seconds"] for r in ours)
    bare_s = statistics.median(r["seconds"] for r in bare)
    peak = max(r["rss_mb"] for r in ours)
    largest_mb = largest / 1e6
    limit = 3 * largest_mb + 300
    return {
        # harness ratio = value / baseline: value = the baseline's time, baseline = ours, so the
        # ratio reads "theirs / ours" (above 1: ours is faster).
        "compare_vs_bare": entry(
            bare_s, ours_s, "s", "ratio >= 0.7",
            ours_seconds=ours_s, bare_seconds=bare_s, bytes_compared=size,
            ours_mb_per_s=size / 1e6 / ours_s, bare_mb_per_s=size / 1e6 / bare_s,
            bare_peak_rss_mb=max(r["rss_mb"] for r in bare),
        ),
        "compare_peak_rss_mb": entry(
            peak, None, "MB", f"value <= {limit:.0f}",
            largest_variable_mb=largest_mb, checkpoint_mb=a.size_bytes / 1e6,
            rss_before_compare_mb=statistics.median(r["rss_before_mb"] for r in ours),
        ),
    }


# --- the measured processes ------------------------------------------------------------------


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_rss_mb() -> float:
    # VmHWM, the peak of this process image. Not getrusage's ru_maxrss: Linux carries that across
    # fork and exec, so a child would report its parent's peak.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _ours(a_id: str, b_id: str) -> dict:
    import io
    import time

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    django.setup()
    import tensorflow  # noqa: F401  (preloaded, as in a worker)
    from django.core.management import call_command

    before = _rss_now_mb()
    out = io.StringIO()
    start = time.perf_counter()
    call_command("compare", a_id, b_id, "--json", stdout=out)
    seconds = time.perf_counter() - start
    report = json.loads(out.getvalue())
    keys = ("l2_a", "l2_b", "l2_diff", "max_abs_diff", "relative_change", "cosine")
    numbers = {v["name"]: {k: v[k] for k in keys} for v in report["variables"]}
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "rss_before_mb": before, "numbers": numbers}


# Elements per block in the baseline: 1 Mi float32 (4 MiB) per side, 8 MiB as float64. Large
# enough that numpy's per-call overhead vanishes, small enough that no full float64 copy of a
# variable ever exists.
BARE_BLOCK = 1 << 20


def _bare(path_a: str, path_b: str) -> dict:
    import time

    import numpy as np
    import tensorflow as tf

    start = time.perf_counter()
    reader_a, reader_b = tf.train.load_checkpoint(path_a), tf.train.load_checkpoint(path_b)
    numbers = {}
    for name in sorted(reader_a.get_variable_to_shape_map()):
        a = np.asarray(reader_a.get_tensor(name)).ravel()
        b = np.asarray(reader_b.get_tensor(name)).ravel()
        # One pass over float32 blocks; sums accumulate in float64 (float32 sums over 64 M
        # elements lose digits), a block at a time.
        ss_a = ss_b = ss_d = dot = 0.0
        max_abs = 0.0
        nan = inf = 0
        for lo in range(0, a.size, BARE_BLOCK):
            a64 = a[lo : lo + BARE_BLOCK].astype(np.float64)
            b64 = b[lo : lo + BARE_BLOCK].astype(np.float64)
            d = b64 - a64
            ss_a += float(a64 @ a64)
            ss_b += float(b64 @ b64)
            ss_d += float(d @ d)
            dot += float(a64 @ b64)
            max_abs = max(max_abs, float(np.abs(d).max()))
            if not np.isfinite(ss_a + ss_b):  # a finite sum proves the block has no NaN/Inf
                nan += int(np.isnan(a64).sum() + np.isnan(b64).sum())
                inf += int(np.isinf(a64).sum() + np.isinf(b64).sum())
        l2_a, l2_b, l2_diff = ss_a**0.5, ss_b**0.5, ss_d**0.5
        numbers[name] = {
            "l2_a": l2_a, "l2_b": l2_b, "l2_diff": l2_diff, "max_abs_diff": max_abs,
            "relative_change": l2_diff / l2_a, "cosine": dot / (l2_a * l2_b), "nan": nan, "inf": inf,
        }
        del a, b
    seconds = time.perf_counter() - start
    for values in numbers.values():
        values.pop("nan"), values.pop("inf")
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "numbers": numbers}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    side, *args = sys.argv[1:]
    if side == "make":
        a, b, largest = make_checkpoints(Path(args[0]))
        result = {"a": a, "b": b, "largest": largest}
    else:
        result = _ours(*args) if side == "ours" else _bare(*args)
    print(json.dumps(result))
