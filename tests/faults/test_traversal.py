"""Path traversal corpus: every endpoint and form that takes a name, id or path.

Each payload is sent as a maintainer (the role that can do the most). Every answer is a refusal
(400/403/404), a redirect to a safe page, or a page with a form error; never a 500, never a byte
of the secret file outside the roots, and the secret file is never deleted.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from django.urls import reverse

from dashboard.models import Checkpoint, Export, Run
from tests.dashboard.conftest import make_user

pytestmark = pytest.mark.django_db

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOTS-7f3a"

# Traversal forms, raw and URL-encoded (the test client decodes a path once, as a server does).
PAYLOADS = [
    "..", "../..", "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2fsecret.txt",
    "%252e%252e%252f", "..%252f..%252fsecret.txt", "..\\..\\secret.txt", "..%5c..%5csecret.txt", "%00",
    "run%00.txt", "/etc/passwd", "//etc/passwd", "%2fetc%2fpasswd", "....//....//secret.txt",
    "C:\\Windows\\win.ini", "escape", "escape/secret.txt", "~root", "%c0%ae%c0%ae/", "-1", "0", "9999999",
]
OK_STATUSES = {200, 302, 400, 403, 404, 405, 416}


@pytest.fixture
def world(checkpoint_root, tmp_path, settings):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(SECRET)
    os.symlink(outside, checkpoint_root / "escape")  # a symlink inside a root that leads out
    settings.EXPORT_ROOT.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, settings.EXPORT_ROOT / "escape.pb")
    (checkpoint_root / "run").mkdir()
    run = Run.objects.create(name="run", directory=str(checkpoint_root / "run"))
    ckpt = Checkpoint.objects.create(run=run, prefix="model.ckpt-1", step=1, saved_at=dt.datetime.now(dt.UTC))
    # Export rows whose paths were tampered with: outside the root, and a symlink out of it.
    Export.objects.create(checkpoint=ckpt, path=str(secret), sha256="0" * 64, size_bytes=len(SECRET))
    Export.objects.create(checkpoint=ckpt, path=str(settings.EXPORT_ROOT / "escape.pb"), sha256="0" * 64)
    Export.objects.create(
        checkpoint=ckpt, path=str(settings.EXPORT_ROOT / ".." / "outside" / "secret.txt"), sha256="0" * 64
    )
    return {"secret": secret, "run": run, "checkpoint": ckpt}


def _url_cases(world) -> list[tuple[str, str, dict | None]]:
    ckpt = world["checkpoint"].pk
    cases = []
    for p in PAYLOADS:
        for template in (
            "/runs/{p}/", "/runs/{p}/chart.json", "/runs/{p}/checkpoints/1/", "/runs/run/checkpoints/{p}/",
            "/runs/{p}/retention/", "/runs/{p}/prune/", "/runs/{p}/steps/", "/runs/{p}/save/",
            "/exports/{p}/", "/exports/{p}/download/", "/jobs/{p}/", "/jobs/{p}/progress/",
            "/runs/run/checkpoints/{p}/freeze/", "/runs/run/checkpoints/{p}/resave/",
        ):
            cases.append(("get", template.format(p=p), None))
        for query in (
            f"/compare/?a={p}&b={ckpt}", f"/compare/?a={ckpt}&b={p}", f"/jobs/?run={p}", f"/exports/?run={p}",
            f"/audit/?run={p}", f"/runs/run/?page={p}&sort={p}", f"/runs/run/steps/?n={p}",
        ):
            cases.append(("get", query, None))
        for template in (
            "/runs/{p}/scan/", "/runs/{p}/prune/now/", "/runs/run/checkpoints/{p}/pin/",
            "/runs/run/checkpoints/{p}/make-latest/", "/runs/run/checkpoints/{p}/verify/", "/jobs/{p}/cancel/",
        ):
            cases.append(("post", template.format(p=p), {}))
        raw = p.replace("%2f", "/").replace("%5c", "\\").replace("%00", "\x00")
        cases.append(("post", reverse("run-new"), {"name": "", "directory": raw}))
        cases.append(("post", reverse("run-new"), {"name": raw, "directory": str(world["secret"].parent)}))
        cases.append(("post", f"/runs/run/checkpoints/{ckpt}/make-latest/", {"state_file": raw}))
        cases.append(("post", f"/runs/run/checkpoints/{ckpt}/resave/", {"new_prefix": raw, "mode": "slots"}))
        cases.append(("post", "/runs/run/save/", {"prefix": raw, "steps": 1, "save_every": 1}))
    for export in Export.objects.all():
        cases.append(("get", f"/exports/{export.pk}/download/", None))
    return cases


def test_traversal_corpus_is_refused_everywhere(client, world, capsys):
    client.force_login(make_user("mallory", "maintainer"))
    cases = _url_cases(world)
    failures = []
    for method, url, data in cases:
        try:
            response = client.get(url) if method == "get" else client.post(url, data)
        except Exception as exc:  # the test client re-raises view exceptions: that would be a 500
            failures.append(f"{method.upper()} {url!r} {data!r}: raised {type(exc).__name__}: {exc}")
            continue
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if response.status_code not in OK_STATUSES:
            failures.append(f"{method.upper()} {url!r} {data!r}: HTTP {response.status_code}")
        if SECRET in body:
            failures.append(f"{method.upper()} {url!r} {data!r}: served the secret file")
    for export in Export.objects.all():  # every tampered export path is refused outright
        assert client.get(f"/exports/{export.pk}/download/").status_code in (403, 404)
    assert world["secret"].read_bytes() == SECRET, "the file outside the roots was changed or deleted"
    assert not Run.objects.exclude(pk=world["run"].pk).exists(), "a run was registered outside the roots"
    with capsys.disabled():
        print(f"\ntraversal corpus: {len(cases)} requests with {len(PAYLOADS)} payloads, {len(failures)} failures")
    assert not failures, "\n".join(failures)
