"""The two pipelines the API is for, over real HTTP: a live server, a real worker, real Redis.

- deployment: with a viewer token only, find the run's newest verified export, download it with a
  resumed Range request, check its sha256 and serve it with TensorFlow;
- training: with an operator token only, track a directory, scan it, freeze the newest
  checkpoint and poll the job until the export is verified.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from dashboard import jobs, scanning
from dashboard.models import Export, Job, Run
from tests.live import module_roots, module_worker, wait_for

from .conftest import token_for

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 120  # the first job of the module waits for the worker to import TensorFlow


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    """The anti-spam recipe trained for 50 steps, saved every 25 (the first save has the .meta)."""
    from persistence.training import make_demo_run

    directory = tmp_path_factory.mktemp("api-demo") / "demo"
    make_demo_run(str(directory), steps=50, save_every=25)
    return directory


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    with module_roots(tmp_path_factory, "api-roots") as base:
        (base / "exports").mkdir()
        yield base


@pytest.fixture(scope="module")
def worker(roots, django_db_setup, django_db_blocker, tmp_path_factory):
    with module_worker(django_db_blocker, tmp_path_factory) as live:
        yield live


class Api:
    """``requests`` against the live server with one token."""

    def __init__(self, base_url: str, secret: str):
        self.base = base_url + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {secret}"

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)

    def post(self, path: str, body: object = None, **kwargs) -> requests.Response:
        return self.session.post(self.base + path, json=body, timeout=30, **kwargs)

    def poll(self, job_url: str, timeout: float = JOB_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.session.get(job_url.replace("/api/v1", self.base, 1), timeout=30).json()
            if job["status"] in ("finished", "failed", "canceled"):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"{job_url} did not end within {timeout} s")


def test_training_pipeline_tracks_scans_freezes_the_newest_and_polls_to_verified(
        live_server, roots, demo_template, worker, api_users):
    name = f"train-{uuid.uuid4().hex[:6]}"
    directory = roots / "checkpoints" / name
    shutil.copytree(demo_template, directory)
    api = Api(live_server.url, token_for(api_users["operator"], "operator", "training pipeline"))

    tracked = api.post("/runs", {"name": name, "directory": str(directory)})
    assert tracked.status_code == 201, tracked.text
    assert tracked.json()["name"] == name and tracked.headers["Content-Type"].startswith("application/json")
    assert api.poll(tracked.json()["scan_job"]["url"])["status"] == "finished"
    scan = api.post(f"/runs/{name}/scan")
    assert scan.status_code == 202
    assert api.poll(scan.json()["job"]["url"])["status"] == "finished"

    newest = api.get(f"/runs/{name}/checkpoints", params={"ordering": "-step", "limit": 1}).json()["items"][0]
    assert newest["step"] == 50 and newest["is_latest"] is True

    key = {"Idempotency-Key": str(uuid.uuid4())}
    freeze = api.post(f"/checkpoints/{newest['id']}/freeze", {"outputs": ["probs"], "clear_devices": True}, headers=key)
    assert freeze.status_code == 202, freeze.text
    started = freeze.json()["job"]
    assert started["kind"] == "freeze" and started["url"] == f"/api/v1/jobs/{started['id']}"
    # The pipeline's retry after a timeout: the same job, no second freeze.
    again = api.post(f"/checkpoints/{newest['id']}/freeze", {"outputs": ["probs"], "clear_devices": True},
                     headers=key)
    assert again.json()["job"]["id"] == started["id"]

    job = api.poll(started["url"])
    assert job["status"] == "finished", job
    assert job["progress"] == 100
    exports = api.get("/exports", params={"run": name, "verified": "true"}).json()["items"]
    assert [(e["checkpoint_id"], e["outputs"], e["verified"]) for e in exports] == [(newest["id"], ["probs"], True)]
    assert exports[0]["max_abs_diff"] <= 1e-6
    assert Job.objects.filter(kind=Job.FREEZE, checkpoint_id=newest["id"]).count() == 1


@pytest.fixture
def frozen_run(roots, demo_template, worker) -> Run:
    """A run with verified exports of steps 25 and 50, frozen by the worker."""
    name = f"deploy-{uuid.uuid4().hex[:6]}"
    shutil.copytree(demo_template, roots / "checkpoints" / name)
    run = Run.objects.create(name=name, directory=str(roots / "checkpoints" / name))
    scanning.scan(run)
    started = [jobs.start(Job.FREEZE, run=run, checkpoint=c, params={"outputs": ["probs"]})
               for c in run.checkpoints.filter(step__in=[25, 50])]

    def ended() -> bool:
        return all(j.is_ended for j in Job.objects.filter(pk__in=[j.pk for j in started]))

    wait_for(ended, JOB_TIMEOUT, what="the freezes")
    assert Export.objects.filter(checkpoint__run=run, verified=True).count() == 2
    return run


def test_deployment_pipeline_downloads_the_newest_verified_export_resumed_and_serves_it(
        live_server, frozen_run, api_users, tmp_path):
    api = Api(live_server.url, token_for(api_users["viewer"], "viewer", "deploy pipeline"))

    found = api.get("/exports", params={"run": frozen_run.name, "verified": "true", "limit": 1}).json()
    newest = found["items"][0]
    assert newest["step"] == 50 and newest["verified"] is True and found["next"] is not None

    # A download cut off half way, resumed where it stopped (what `curl -C -` does).
    url = newest["download_url"].replace("/api/v1", "", 1)
    half = newest["size_bytes"] // 2
    first = api.get(url, headers={"Range": f"bytes=0-{half - 1}"})
    assert first.status_code == 206 and len(first.content) == half
    etag = first.headers["ETag"]
    assert etag == f'"{newest["sha256"]}"'
    rest = api.get(url, headers={"Range": f"bytes={half}-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {half}-{newest['size_bytes'] - 1}/{newest['size_bytes']}"
    data = first.content + rest.content
    assert hashlib.sha256(data).hexdigest() == newest["sha256"]
    # The same bytes as the page's download button (one code path), and a stale If-Range gets all.
    whole = api.get(url, headers={"If-Range": '"stale"', "Range": "bytes=10-"})
    assert whole.status_code == 200 and whole.content == data
    assert api.get(url, headers={"If-None-Match": etag}).status_code == 304
    beyond = api.get(url, headers={"Range": f"bytes={newest['size_bytes'] + 10}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Type"] == "application/problem+json"

    # Serve it: the frozen graph alone gives the checkpoint's probabilities.
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe
    from persistence.restore import restore_and_run

    sample = AntiSpamRecipe().sample_input()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            frozen = sess.run("probs:0", feed_dict={"x:0": sample["x"]})
    directory = Path(frozen_run.directory)
    meta = sorted(directory.glob("*.meta"))[0]
    restored = restore_and_run(str(directory / "model.ckpt-50"), str(meta), feed=sample,
                               outputs=["probs"]).outputs["probs"]
    np.testing.assert_allclose(frozen, np.asarray(restored), rtol=0, atol=1e-6)

    # Viewers cannot start anything with that token.
    assert api.post(f"/checkpoints/{newest['checkpoint_id']}/freeze", {"outputs": ["probs"]}).status_code == 403

