"""Object-storage benchmarks against a local S3-compatible server (moto's, on loopback):
``s3_scan_vs_bare`` and ``s3_rescan_requests_per_1k_keys``.

The server runs in a process of its own. A run of ``N`` tiny TF1 checkpoints (``.index`` + one data shard each, one ``.meta``, one state
file) is written locally by TensorFlow and uploaded once with boto3.

``s3_scan_vs_bare``: our first scan of the run as a worker does it (``scanning.scan`` of a new
``Run``: one listing, the state file, every ``.index`` fetched and read for its variables, rows
stored) vs a bare boto3 script that lists the prefix with the paginator and GETs every ``.index``
with a thread pool as wide as ours (``storage.READ_CONCURRENCY``), reading nothing in them.
Medians of alternating repeats, each repeat of ours on a fresh run row. It measures the cost of
our layer (s3fs, index parsing, rows) over the requests themselves on a loopback server; it does
not measure a real network (latency would dominate both sides) nor S3's own throttling.

``s3_rescan_requests_per_1k_keys``: the requests (LIST and GET, counted on the client with a
botocore ``before-send`` hook) of a rescan of the unchanged run, divided by the least possible
number of LISTs, ``ceil(keys / 1000)`` (S3 returns at most 1,000 keys per LIST page). 1.0 means one
LIST per started 1,000 keys and no GET at all. The raw requests per 1,000 keys are recorded too.
It does not measure time.

``s3_stage_vs_bare``: staging one large TF1 checkpoint (``S3_STAGE_MB`` of variables, 1024 by
default, in ``S3_STAGE_SHARDS`` data shards, 4 by default, plus its ``.index`` and ``.meta``) from
the bucket into an empty staging cache (``persistence.staging``: one LIST, ranged GETs with
``If-Match``, 16 MiB parts 10 at a time, written at their offsets into a temporary file, renamed,
hard links into the view) vs boto3's ``download_file`` of the same objects into a directory (its
transfer manager with default settings: 8 MiB parts, 10 threads; no fsync), one object after
another. Medians of alternating repeats, each into a fresh directory. It measures the whole cold
stage on a loopback server; it does not measure a real network, and a warm stage (no GET at all) is recorded only as ``warm_seconds``.

    python -m bench s3            # N = 1000, 5 scan repeats, a 1 GB checkpoint in 4 shards staged 3 times
    S3_BENCH_N=200 S3_STAGE_MB=64 python -m bench s3   # a smaller smoke run
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.harness import entry, timed

N_CHECKPOINTS = int(os.environ.get("S3_BENCH_N", "1000"))
REPEAT = int(os.environ.get("S3_BENCH_REPEAT", "5"))
STAGE_REPEAT = int(os.environ.get("S3_STAGE_REPEAT", "3"))
STAGE_MB = int(os.environ.get("S3_STAGE_MB", "1024"))
# moto's server reads a whole object for every ranged GET: a 1 GiB single shard costs it 64 reads of
# 1 GiB for our 16 MiB parts (and 128 for boto3's 8 MiB ones), minutes per repeat that measure moto.
# Four 256 MiB shards, as a model spread over devices saves, are still fetched in ranged parts.
STAGE_SHARDS = int(os.environ.get("S3_STAGE_SHARDS", "4"))


def _start_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own: neither side shares an interpreter with it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        raise RuntimeError("moto's server did not start")
    return server, f"http://127.0.0.1:{port}"


def bare_scan(client: object, bucket: str, prefix: str, width: int) -> int:
    """List the prefix and GET every ``.index`` (bytes only), ``width`` GETs in flight."""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/", Delimiter="/"):
        keys.extend(item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(".index"))

    def get(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    with concurrent.futures.ThreadPoolExecutor(width) as pool:
        return sum(pool.map(get, keys))


def run(work: Path, n: int = N_CHECKPOINTS, repeat: int = REPEAT) -> dict[str, dict]:
    import boto3
    import tensorflow as tf  # noqa: F401  (import cost is not part of either measurement)

    from persistence import storage
    from tests.checkpoint_factory import make_many_tiny_checkpoints

    server, endpoint = _start_server()
    saved_env = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        from botocore.config import Config

        client = boto3.client("s3", config=Config(max_pool_connections=32))
        client.create_bucket(Bucket=bucket)
        local = work / "s3-source"
        make_many_tiny_checkpoints(local, n)
        names = sorted(os.listdir(local))

        def upload(name: str) -> None:
            client.put_object(Bucket=bucket, Key=f"runs/many/{name}", Body=(local / name).read_bytes())

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(upload, names))
        results = _measure(client, bucket, names, n, repeat, storage)
        results.update(_measure_stage(client, bucket, work, STAGE_REPEAT))
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _measure(client, bucket: str, names: list[str], n: int, repeat: int, storage) -> dict[str, dict]:
    from django.conf import settings

    from dashboard import scanning
    from dashboard.models import Run

    settings.CHECKPOINT_OBJECT_ROOTS = [f"s3://{bucket}/runs"]
    url = f"s3://{bucket}/runs/many"
    # Imports and the first client (s3fs, aiobotocore) are not part of the measurement, as
    # TensorFlow's import is not.
    storage.storage_for(url).list(url)
    width = storage.READ_CONCURRENCY
    ours, bare = [], []
    for i in range(repeat):
        run = Run.objects.create(name=f"s3-bench-{i}", directory=url)
        # Alternating which side goes first: the machine is shared.
        sides = [("ours", lambda run=run: scanning.scan(run)), ("bare", lambda: bare_scan(client, bucket,
                                                                                          "runs/many", width))]
        for side, func in (sides if i % 2 == 0 else sides[::-1]):
            (ours if side == "ours" else bare).append(timed(func))
        run.delete()

    run = Run.objects.create(name="s3-bench-rescan", directory=url)
    first = scanning.scan(run)
    assert first["created"] == n, first
    with storage.count_requests() as counts:
        again = scanning.scan(run)
    assert again["unchanged_directory"], again
    requests = sum(counts.values())
    keys = len(names)
    pages = math.ceil(keys / 1000)
    return {
        "s3_scan_vs_bare": entry(
            statistics.median(ours), statistics.median(bare), "s", "ratio <= 1.5", checkpoints=n, keys=keys,
            repeat=repeat, statistic="median of alternating repeats", spread=[min(ours), max(ours)],
            baseline_spread=[min(bare), max(bare)], concurrency=width,
            baseline_is="boto3 paginated LIST + GET of every .index, thread pool of the same width",
        ),
        "s3_rescan_requests_per_1k_keys": entry(
            requests / pages, None, "requests per started 1,000 keys", "value <= 1.1", keys=keys,
            requests=dict(counts), per_thousand_keys_raw=requests / (keys / 1000), least_lists=pages,
        ),
    }


def _write_large_checkpoint(directory: Path, megabytes: int, shards: int) -> str:
    """A TF1 ``Saver`` checkpoint of about ``megabytes`` MB of float32 variables (four of them), in
    ``shards`` data shards: the variables are placed on that many CPU devices and saved with
    ``Saver(sharded=True)``, one shard per device, as a checkpoint of a model spread over devices is."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    per_variable = max(1, megabytes * (1 << 20) // 4 // 4)
    config = tf.compat.v1.ConfigProto(device_count={"CPU": shards})
    with tf.Graph().as_default(), tf.compat.v1.Session(config=config) as session:
        # Initialisers, not constants: the values must not be copied into the .meta as well.
        for i in range(4):
            with tf.device(f"/cpu:{i % shards}"):
                tf.compat.v1.get_variable(f"layer{i}", shape=[per_variable], dtype=tf.float32,
                                          initializer=tf.compat.v1.random_uniform_initializer(seed=i))
        session.run(tf.compat.v1.global_variables_initializer())
        saver = tf.compat.v1.train.Saver(sharded=shards > 1)
        return saver.save(session, str(directory / "large.ckpt"), global_step=1)


def _measure_stage(client, bucket: str, work: Path, repeat: int) -> dict[str, dict]:
    import shutil

    from persistence import staging

    source = work / "s3-large"
    prefix_path = _write_large_checkpoint(source, STAGE_MB, STAGE_SHARDS)
    prefix = os.path.basename(prefix_path)
    names = sorted(n for n in os.listdir(source) if n.startswith(prefix + "."))
    for name in names:  # boto3's own multipart upload: the objects' ETags are what S3 would give
        client.upload_file(str(source / name), bucket, f"runs/large/{name}")
    shutil.rmtree(source)
    url = f"s3://{bucket}/runs/large"
    total = sum(item["Size"] for item in client.list_objects_v2(Bucket=bucket, Prefix="runs/large/")["Contents"])

    def ours(target: Path) -> None:
        with staging.StagingCache(target, 4 * total).stage(url, prefix, meta=f"{prefix}.meta") as staged:
            assert os.path.getsize(staged.path + ".index") > 0

    def bare(target: Path) -> None:
        target.mkdir()
        for name in names:
            client.download_file(bucket, f"runs/large/{name}", str(target / name))

    mine, theirs = [], []
    for i in range(repeat):
        sides = [("ours", ours), ("bare", bare)]
        for side, func in (sides if i % 2 == 0 else sides[::-1]):
            target = work / f"stage-{side}-{i}"
            (mine if side == "ours" else theirs).append(timed(lambda func=func, target=target: func(target)))
            if side == "ours":
                warm = timed(lambda target=target: ours(target))
            shutil.rmtree(target, ignore_errors=True)
    return {
        "s3_stage_vs_bare": entry(
            statistics.median(mine), statistics.median(theirs), "s", "ratio <= 1.2", bytes=total,
            objects=len(names), repeat=repeat, statistic="median of alternating repeats",
            spread=[min(mine), max(mine)], baseline_spread=[min(theirs), max(theirs)], warm_seconds=warm,
            throughput_mb_s=total / statistics.median(mine) / 1e6,
            baseline_is="boto3 download_file of each object (default transfer manager: 8 MiB parts, 10 threads)",
        ),
    }
