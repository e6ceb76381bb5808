"""``CHECKPOINT_ROOTS`` with bucket URLs among local directories (settings read in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
PRINT_ROOTS = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps([[str(p) for p in settings.CHECKPOINT_ROOTS], settings.CHECKPOINT_OBJECT_ROOTS]))"
)


def _settings(roots: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHECKPOINT_ROOTS": roots, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
           "VAR_DIR": str(tmp_path / "var"), "DEBUG": "1"}
    return subprocess.run([sys.executable, "-c", PRINT_ROOTS], cwd=BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)


def test_url_entries_become_object_roots_and_never_local_paths(tmp_path):
    local = tmp_path / "ckpts"
    done = _settings(f"{local}:s3://ml-bucket/runs/:{tmp_path / 'more'}:S3://other-bucket/a/b:gs://ml_gcs-1/runs",
                     tmp_path)
    assert done.returncode == 0, done.stderr
    paths, urls = json.loads(done.stdout.strip().splitlines()[-1])
    assert paths == [str(local.resolve()), str((tmp_path / "more").resolve())]
    assert urls == ["s3://ml-bucket/runs", "s3://other-bucket/a/b", "gs://ml_gcs-1/runs"]


def test_a_malformed_bucket_root_stops_the_start(tmp_path):
    for bad in ("s3://ml-bucket/runs/../x", "s3://key:secret@ml-bucket/runs", "gs://ml-bucket/../runs",
                "gs://key:secret@ml-bucket/runs", "ftp://ml-bucket/runs"):
        done = _settings(f"{tmp_path}:{bad}", tmp_path)
        assert done.returncode != 0
        assert "ImproperlyConfigured" in done.stderr and "CHECKPOINT_ROOTS" in done.stderr
        assert "secret" not in done.stderr.replace(bad, "")
