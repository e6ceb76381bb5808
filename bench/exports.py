"""Export benchmarks: ``freeze_vs_bare``.

``freeze_vs_bare``: a freeze job through the whole system (enqueue → our ``Job`` row
``finished``, a warm worker that has TensorFlow imported) against the same TensorFlow calls in a
bare script, on a TF1 checkpoint with 105 MB of variables. The bare script is what a careful
engineer does by hand, timed after ``import tensorflow`` (the preloading worker has paid that
before the fork):

1. ``import_meta_graph(PREFIX.meta, clear_devices=True)`` in a fresh graph, a ``Session``,
   ``saver.restore(sess, PREFIX)``;
2. ``convert_variables_to_constants(sess, graph_def, ["probs"])``;
3. ``SerializeToString`` and write the ``.pb`` (``write`` + ``fsync``: it is a deployment artifact);
4. read it back, ``GraphDef.ParseFromString``, ``import_graph_def`` into a fresh graph, run
   ``probs`` on a sample batch and compare with the restored checkpoint's ``probs`` (max abs diff).

Step 4 uses the session config the freeze engine uses (Grappler's meta optimizer off), so that the
two sides make the same TensorFlow calls and the ratio measures what the system adds (queue, rows,
graph safety check, SHA-256, temp file + rename, progress writes). The bare script with TensorFlow's
default config is timed too and reported as ``bare_default_config_seconds`` (Grappler copies every
constant of the frozen graph, which makes the hand-made baseline slower, not faster).

The job side is timed from ``jobs.start`` until the row reads ``finished`` (polled every 20 ms);
``job_seconds`` splits it into queue wait, job body and the engine's own time. Both sides run
interleaved, ``REPEAT`` times each, and the medians are compared.

Downloads are the ``downloads`` group (``bench/downloads.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.harness import entry

BASE_DIR = Path(__file__).resolve().parent.parent
REPEAT = 5  # the sides spread by a few per cent; each bare run is a process that imports TensorFlow (~4 s)
DEFAULT_CONFIG_REPEAT = 3  # an aside (the baseline with Grappler on), not a target's side
INPUT_DIM, HIDDEN = 1024, 12_800  # kernels [1024, 12800] and [12800, 1024]: 104.9 MB of float32
DOWNLOAD_BYTES = 2**30

BARE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf  # not timed: the preloading worker has it imported before the fork

prefix, output_path, default_config = sys.argv[1], sys.argv[2], sys.argv[3] == "default"
v1 = tf.compat.v1
sample = np.random.default_rng(0).random((4, __DIM__), dtype=np.float32)
start = time.perf_counter()
with tf.Graph().as_default() as graph:
    saver = v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
    with v1.Session(graph=graph) as sess:
        saver.restore(sess, prefix)
        frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["probs"])
        with open(output_path, "wb") as handle:
            handle.write(frozen.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        expected = sess.run("probs:0", {"x:0": sample})
loaded = v1.GraphDef()
with open(output_path, "rb") as handle:
    loaded.ParseFromString(handle.read())
with tf.Graph().as_default() as fresh:
    v1.import_graph_def(loaded, name="")
    config = v1.ConfigProto()
    if not default_config:
        config.graph_options.rewrite_options.disable_meta_optimizer = True
    with v1.Session(graph=fresh, config=config) as sess:
        got = sess.run("probs:0", {"x:0": sample})
diff = float(np.max(np.abs(got - expected)))
print(json.dumps({"seconds": time.perf_counter() - start, "max_abs_diff": diff}))
""".replace("__DIM__", str(INPUT_DIM))


def make_large_checkpoint(directory: Path, hidden: int = HIDDEN) -> int:
    """A two-layer TF1 model with ``8 KiB x hidden`` of float32 variables, saved once; returns the variable bytes."""
    import tensorflow as tf

    v1 = tf.compat.v1
    directory.mkdir(parents=True)
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, INPUT_DIM], name="x")
        # Initializer ops, not constants: the .meta stays small, as a trained model's does.
        init = v1.random_uniform_initializer(-0.01, 0.01, seed=1)
        hidden_kernel = v1.get_variable("hidden/kernel", [INPUT_DIM, hidden], initializer=init)
        hidden_bias = v1.get_variable("hidden/bias", [hidden], initializer=v1.zeros_initializer())
        out_kernel = v1.get_variable("output/kernel", [hidden, INPUT_DIM], initializer=init)
        out_bias = v1.get_variable("output/bias", [INPUT_DIM], initializer=v1.zeros_initializer())
        activations = tf.nn.relu(tf.matmul(x, hidden_kernel) + hidden_bias)
        tf.nn.softmax(tf.matmul(activations, out_kernel) + out_bias, name="probs")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(directory / "model.ckpt"), global_step=1000)
    return 4 * (2 * INPUT_DIM * hidden + hidden + INPUT_DIM)


def bare_once(prefix: str, output: Path, config: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", BARE_SCRIPT, prefix, str(output), config], cwd=BASE_DIR, capture_output=True,
        text=True, check=True, env={**os.environ, "PYTHONPATH": str(BASE_DIR)},
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["max_abs_diff"] > 1e-6:
        raise RuntimeError(f"bare freeze does not match its checkpoint: {report}")
    return float(report["seconds"])


# A freeze measured in a process of its own, so that its peak RSS (VmHWM) is the freeze's and
# nothing else's. "baseline" does the part every graph-executing child does anyway: import
# TensorFlow and run one tiny session. The freeze is the engine call the sandboxed job makes.
PEAK_SCRIPT = """
import json, os, sys
import numpy as np
from persistence.tfruntime import import_tensorflow
tf = import_tensorflow()  # as the worker imports it

def peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

mode = sys.argv[1]
v1 = tf.compat.v1
with tf.Graph().as_default() as graph:
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    y = tf.identity(x * 2.0, name="y")
    with v1.Session(graph=graph) as sess:
        sess.run(y, {x: np.ones((1, 4), np.float32)})
report = {"baseline_peak_bytes": peak_bytes()}
if mode == "freeze":
    from persistence.freeze import freeze_checkpoint

    prefix, output = sys.argv[2], sys.argv[3]
    result = freeze_checkpoint(prefix, prefix + ".meta", output, outputs=["probs"])
    report["verified"] = result.verified
    report["seconds"] = result.seconds
report["peak_bytes"] = peak_bytes()
print(json.dumps(report))
"""

# About 420 MB of variables: big enough that copies of it dominate the TensorFlow baseline, small
# enough to freeze a few times per bench run.
PEAK_HIDDEN = 51_200
PEAK_REPEAT = 2  # the peak repeats to the megabyte (1,634, 1,633, 1,633 MB in three runs)


def _peak_child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *args], cwd=BASE_DIR, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(BASE_DIR)}, timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"freeze peak child {args[0]} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def freeze_peak_rss(work: Path, hidden: int = PEAK_HIDDEN, repeat: int = PEAK_REPEAT) -> dict[str, dict]:
    directory = work / "peak"
    variable_bytes = make_large_checkpoint(directory, hidden)
    prefix = str(directory / "model.ckpt-1000")
    size = sum(os.path.getsize(p) for p in directory.iterdir() if p.name.startswith("model.ckpt-1000.data"))
    output = work / "peak.pb"
    baselines, peaks, seconds = [], [], []
    try:
        for _ in range(repeat):  # alternating, so that drift hits both alike
            baselines.append(_peak_child("baseline")["peak_bytes"])
            report = _peak_child("freeze", prefix, str(output))
            if not report["verified"]:
                raise RuntimeError(f"the measured freeze did not verify: {report}")
            peaks.append(report["peak_bytes"])
            seconds.append(report["seconds"])
            output.unlink(missing_ok=True)
    finally:
        for item in directory.iterdir():
            item.unlink()
    baseline = statistics.median(baselines)
    ratios = [(p - baseline) / size for p in peaks]
    return {
        "freeze_peak_rss_ratio": entry(
            statistics.median(ratios), None, "x checkpoint", "value <= 3",
            checkpoint_bytes=size, variable_bytes=variable_bytes, repeats=repeat,
            peak_rss_mb={"median": statistics.median(peaks) / 1e6, "all": [round(p / 1e6) for p in peaks]},
            tf_baseline_rss_mb={"median": baseline / 1e6, "all": [round(b / 1e6) for b in baselines]},
            ratio_spread=[round(r, 3) for r in ratios], freeze_seconds=statistics.median(seconds),
        ),
    }


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return os.environ["DATABASE_URL"]


def _child_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    return {
        **os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": settings.REDIS_URL,
        "CHECKPOINT_ROOTS": os.pathsep.join(str(r) for r in settings.CHECKPOINT_ROOTS),
        "EXPORT_ROOT": str(settings.EXPORT_ROOT), "VAR_DIR": str(settings.VAR_DIR),
        "TF_CPP_MIN_LOG_LEVEL": "2", "SCAN_INTERVAL_SECONDS": "0", **extra,
    }


def freeze_vs_bare(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    from django.conf import settings

    from dashboard import jobs, scanning
    from dashboard.localredis import PrivateRedis
    from dashboard.models import Export, Job, Run

    root = Path(settings.CHECKPOINT_ROOTS[0])
    variable_bytes = make_large_checkpoint(root / "large")
    run = Run.objects.create(name="large", directory=str(root / "large"))
    scanning.scan(run)
    checkpoint = run.checkpoints.get()

    private = None
    if not os.environ.get("REDIS_URL"):
        private = PrivateRedis(settings.VAR_DIR / "redis.sock").start()
    # A queue of its own: a development worker on the same Redis must not take these jobs.
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    settings.JOB_QUEUE = queue
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, queue: {**settings.RQ_QUEUES["default"]}}
    log = open(work / "freeze-worker.log", "wb")  # noqa: SIM115 - closed with the worker below
    worker = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "rqworker", queue,
         "--worker-class", "dashboard.worker.PreloadingWorker"],
        cwd=BASE_DIR, env=_child_env(JOB_QUEUE=queue), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def through_queue() -> float:
        started = time.perf_counter()
        job = jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint, params={"outputs": ["probs"]})
        ended = Job.objects.filter(pk=job.pk, status__in=Job.ENDED)
        while not ended.exists():
            if worker.poll() is not None or time.perf_counter() - started > 600:
                tail = (work / "freeze-worker.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"job #{job.pk} did not finish (worker exit {worker.poll()}):\n{tail}")
            # 20 ms: finer polling would steal CPU from the job on a 2-core machine.
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        job.refresh_from_db()
        if job.status != Job.FINISHED:
            raise RuntimeError(f"job #{job.pk} {job.status}: {job.error}")
        engine = Export.objects.get(pk=job.result["export"]["id"]).verification["seconds"]
        breakdown.append({"until_started": (job.started_at - job.created_at).total_seconds(),
                          "body": (job.ended_at - job.started_at).total_seconds(), "engine": engine})
        return elapsed

    bare_dir = work / "freeze-bare"  # the jobs group's baseline writes under work / "bare"
    bare_dir.mkdir()
    breakdown: list[dict] = []
    try:
        through_queue()  # warm: worker started, TensorFlow imported, checkpoint in the page cache
        bare_once(checkpoint.path, bare_dir / "probs.pb", "same")
        queued, bare = [], []
        for _ in range(repeat):  # interleaved, so that drift in the machine's load hits both sides
            queued.append(through_queue())
            bare.append(bare_once(checkpoint.path, bare_dir / "probs.pb", "same"))
        bare_default = statistics.median(
            bare_once(checkpoint.path, bare_dir / "probs.pb", "default") for _ in range(DEFAULT_CONFIG_REPEAT)
        )
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        if private is not None:
            private.stop()
    export = Export.objects.get(checkpoint=checkpoint)
    assert export.verified, export.max_abs_diff
    size = export.size_bytes
    for path in (Path(export.path), bare_dir / "probs.pb"):
        path.unlink(missing_ok=True)
    for item in (root / "large").iterdir():
        item.unlink()
    return {
        "freeze_vs_bare": entry(
            statistics.median(queued), statistics.median(bare), "s", "ratio <= 1.15",
            variable_bytes=variable_bytes, pb_bytes=size, repeats=repeat,
            bare_default_config_seconds=bare_default,
            job_seconds={key: statistics.median(b[key] for b in breakdown[1:]) for key in breakdown[0]},
        ),
    }


def run(work: Path) -> dict[str, dict]:
    results = freeze_vs_bare(work)
    print(json.dumps(results, indent=1), flush=True)
    return results
