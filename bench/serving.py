"""Serving exports: a SavedModel export vs the same TensorFlow calls by hand, and .tar downloads vs files.

``savedmodel_vs_bare``: both sides run in a process of their own, timed after TensorFlow is
imported (the worker has it imported before it forks), alternating, medians compared. The bare
script does what a careful engineer would: import the meta graph, restore, build the serving
signature, save with ``SavedModelBuilder``, fsync the files (a deployment artifact, as the ``.pb``
baseline of ``freeze_vs_bare`` is), load it back with TensorFlow's v1 SavedModel loader (a fresh
graph and session, as TF Serving loads a TF1 model; cheaper than ``tf.saved_model.load``) and
compare the outputs through the signature. Ours does the same through
``persistence.savedmodel.export_saved_model``, plus the graph safety check, the
temporary-directory rename and the sha256 of the reproducible archive (hashed from the written
files while they are loaded back and synced; no archive is written). Not measured: the sandboxed child and the
job around the engine (``freeze_vs_bare`` covers those for a freeze).

``tar_download_vs_file``: the download view streams a SavedModel directory's archive (made from
the directory as it is sent) and a ``.pb`` export holding the same bytes; rates compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.exports import BASE_DIR, INPUT_DIM, make_large_checkpoint
from bench.harness import entry

REPEAT = 9

BARE_SCRIPT = """
import json, os, sys, time
import numpy as np
from persistence.tfruntime import import_tensorflow
tf = import_tensorflow()  # not timed

prefix, output = sys.argv[1], sys.argv[2]
v1 = tf.compat.v1
sample = np.random.default_rng(0).random((4, __DIM__), dtype=np.float32)
start = time.perf_counter()
with tf.Graph().as_default() as graph:
    saver = v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
    with v1.Session(graph=graph) as sess:
        saver.restore(sess, prefix)
        expected = sess.run("probs:0", {"x:0": sample})
        signature = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"x": graph.get_tensor_by_name("x:0")}, outputs={"probs": graph.get_tensor_by_name("probs:0")})
        builder = v1.saved_model.Builder(output)
        builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={"serving_default": signature})
        builder.save()
# Synced, as the .pb baseline of freeze_vs_bare is: it is a deployment artifact.
for root, _dirs, names in os.walk(output):
    for name in names:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
# Loaded back the way TF Serving loads a TF1 model: a fresh graph and session, through the signature.
with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
    meta = v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING], output)
    signature = meta.signature_def["serving_default"]
    got = sess.run(signature.outputs["probs"].name, {signature.inputs["x"].name: sample})
print(json.dumps({"seconds": time.perf_counter() - start, "max_abs_diff": float(np.max(np.abs(got - expected)))}))
""".replace("__DIM__", str(INPUT_DIM))

OURS_SCRIPT = """
import json, sys, time
import numpy as np
from persistence.tfruntime import import_tensorflow
import_tensorflow()  # not timed
from persistence.savedmodel import export_saved_model

prefix, output = sys.argv[1], sys.argv[2]
sample = np.random.default_rng(0).random((4, __DIM__), dtype=np.float32)
start = time.perf_counter()
result = export_saved_model(prefix, output, meta_path=prefix + ".meta", outputs=["probs"], sample_feed={"x": sample})
print(json.dumps({"seconds": time.perf_counter() - start, "max_abs_diff": result.max_abs_diff}))
""".replace("__DIM__", str(INPUT_DIM))


def _once(script: str, prefix: str, output: Path) -> float:
    shutil.rmtree(output, ignore_errors=True)
    Path(str(output) + ".tar").unlink(missing_ok=True)
    # Both sides write ~100 MB and fsync it: left to the kernel, the previous run's deletes and
    # writeback land in the next one's timing at random (measured: either side 0.45 or 0.8 s).
    os.sync()
    done = subprocess.run([sys.executable, "-c", script, prefix, str(output)], cwd=BASE_DIR, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(BASE_DIR)}, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"SavedModel bench child failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["max_abs_diff"] > 1e-6:
        raise RuntimeError(f"SavedModel does not match its checkpoint: {report}")
    return float(report["seconds"])


def savedmodel_vs_bare(work: Path, repeat: int = REPEAT) -> dict[str, dict]:
    directory = work / "savedmodel-source"
    variable_bytes = make_large_checkpoint(directory)
    prefix = str(directory / "model.ckpt-1000")
    ours, bare = [], []
    try:
        for _ in range(repeat):
            bare.append(_once(BARE_SCRIPT, prefix, work / "bare.savedmodel"))
            ours.append(_once(OURS_SCRIPT, prefix, work / "ours.savedmodel"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"savedmodel_vs_bare": entry(
        statistics.median(ours), statistics.median(bare), "s", "ratio <= 1.2", variable_bytes=variable_bytes,
        repeats=repeat, ours_all=[round(t, 3) for t in ours], bare_all=[round(t, 3) for t in bare],
    )}


def _download_seconds(client, pk: int, size: int) -> float:
    from django.urls import reverse

    started = time.perf_counter()
    response = client.get(reverse("export-download", args=[pk]))
    got = sum(len(chunk) for chunk in response.streaming_content)
    seconds = time.perf_counter() - started
    if response.status_code != 200 or got != size:
        raise RuntimeError(f"download of export {pk} answered {response.status_code} with {got} bytes")
    return seconds


def tar_download_vs_file(work: Path, repeat: int = REPEAT, size: int = 256 << 20) -> dict[str, dict]:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    from dashboard.models import Checkpoint, Export, Run
    from dashboard.models.export import ARCHIVE_STREAMED
    from persistence.tarball import archive_layout, write_tar

    run_dir = Path(settings.CHECKPOINT_ROOTS[0]) / "tars"
    run_dir.mkdir(parents=True)
    run = Run.objects.create(name="tars", directory=str(run_dir))
    checkpoint = Checkpoint.objects.create(run=run, prefix="model.ckpt-1", step=1, saved_at=timezone.now())
    base = Path(settings.EXPORT_ROOT) / "tars" / "1"
    saved_model = base / "probs.savedmodel"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(os.urandom(4096))
    with open(saved_model / "variables" / "variables.data-00000-of-00001", "wb") as handle:
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
    single = base / "probs.pb"
    tar_size, tar_sha = write_tar(saved_model, single)  # the archive's bytes, as one plain file
    layout = archive_layout(saved_model)
    tar_export = Export.objects.create(checkpoint=checkpoint, kind=Export.SAVED_MODEL, path=str(saved_model),
                                       size_bytes=tar_size, sha256=tar_sha, verified=True,
                                       file_mtime_ns=layout.st_mtime_ns,
                                       verification={"archive": ARCHIVE_STREAMED})
    file_export = Export.objects.create(checkpoint=checkpoint, kind=Export.FROZEN_PB, path=str(single),
                                        size_bytes=tar_size, sha256=hashlib.sha256(single.read_bytes()).hexdigest(),
                                        verified=True, file_mtime_ns=os.stat(single).st_mtime_ns)
    user = User.objects.create_superuser("bench-tar", password="bench-only")
    client = Client()
    client.force_login(user)
    tars, files = [], []
    _download_seconds(client, tar_export.pk, tar_size)  # warm the page cache for both
    _download_seconds(client, file_export.pk, tar_size)
    for _ in range(repeat):
        tars.append(_download_seconds(client, tar_export.pk, tar_size))
        files.append(_download_seconds(client, file_export.pk, tar_size))
    mb = tar_size / 1e6
    return {"tar_download_vs_file": entry(
        mb / statistics.median(tars), mb / statistics.median(files), "MB/s", "ratio >= 0.8", bytes=tar_size,
        repeats=repeat,
    )}


def run(work: Path) -> dict[str, dict]:
    return {**savedmodel_vs_bare(work), **tar_download_vs_file(work)}
