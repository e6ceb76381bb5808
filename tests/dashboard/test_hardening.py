"""Hardening of the web layer: who sees job tracebacks, the Content-Security-Policy, and prune
previews that cost the web process one plan per state of a run, not one per view."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard import pruning, retention
from dashboard.models import Checkpoint, Export, Job, Run
from tests.dashboard.test_prune_plan import fake_run
from tests.live import BASE_DIR

pytestmark = pytest.mark.django_db

TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/worker/dashboard/jobs.py", line 306, in run_job\nValueError: boom'


# --- job tracebacks ------------------------------------------------------------------------------


@pytest.fixture
def failed_job(checkpoint_root) -> Job:
    """A failed job's row as the worker leaves it (error + traceback); the page only reads rows."""
    run = Run.objects.create(name="r", directory=str(checkpoint_root))
    return Job.objects.create(kind=Job.SCAN, run=run, status=Job.FAILED, error="boom: the scan failed", traceback=TRACEBACK)


def test_viewers_see_a_failed_jobs_error_but_not_its_traceback(client, viewer, failed_job):
    client.force_login(viewer)
    html = client.get(reverse("job", args=[failed_job.pk])).content.decode()
    assert "boom: the scan failed" in html
    assert "Traceback" not in html and "/srv/worker" not in html


@pytest.mark.parametrize("role", ["operator", "maintainer"])
def test_operators_and_maintainers_see_the_traceback(client, request, role, failed_job):
    client.force_login(request.getfixturevalue(role))
    html = client.get(reverse("job", args=[failed_job.pk])).content.decode()
    assert "boom: the scan failed" in html
    assert "Traceback" in html and "/srv/worker/dashboard/jobs.py" in html


# --- Content-Security-Policy ---------------------------------------------------------------------


def test_pages_send_a_self_only_content_security_policy(client, viewer):
    for response in (client.get(reverse("login")), (client.force_login(viewer), client.get(reverse("runs")))[1]):
        policy = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


def test_templates_have_no_inline_scripts_styles_or_handlers():
    """What ``default-src 'self'`` would block: the browser tests would show it as console errors
    on the pages they visit; this covers every template."""
    problems = []
    for path in sorted((BASE_DIR / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern, what in [
            (r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", "inline script"),
            (r"<style\b", "style element"),
            (r"\sstyle=", "style attribute"),
            (r"\son[a-z]+=", "event handler attribute"),
            (r"\shx-on", "htmx inline handler"),
            (r"javascript:", "javascript: URL"),
        ]:
            problems += [f"{path.relative_to(BASE_DIR)}: {what}" for _ in re.finditer(pattern, text)]
    assert not problems, problems


def test_heatmap_palette_has_a_class_for_every_colour():
    from dashboard.views.heatmap import DECADES, SPECIAL

    css = (BASE_DIR / "dashboard/static/dashboard/site.css").read_text()
    colours = {c for _, c, _ in DECADES} | {c for c, _, _ in SPECIAL.values()}
    missing = [c for c in colours if f".hm-{c[1:]} {{ background: {c}; }}" not in css]
    assert not missing, missing


# --- prune preview: one plan per run state ---------------------------------------------------


def _preview(client, run: Run) -> dict:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("run-prune", args=[run.name]))
    assert response.status_code == 200
    rows_read = [q["sql"] for q in queries.captured_queries if '"pin_reason"' in q["sql"]]
    return {"response": response, "planned": bool(rows_read), "html": response.content.decode()}


def test_the_preview_is_planned_once_and_reused_until_the_run_changes(client, maintainer, checkpoint_root):
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 13)), max_to_keep=3)
    client.force_login(maintainer)

    first = _preview(client, run)
    assert first["planned"] and "Prune now: delete 9 checkpoints" in first["html"]
    again = _preview(client, run)
    assert not again["planned"], "the second view planned again instead of reusing the plan"
    assert again["response"].context["plan"].fingerprint == first["response"].context["plan"].fingerprint

    # Every change the plan depends on shows at once.
    checkpoint = run.checkpoints.get(step=2)
    checkpoint.run = run
    pruning.pin(checkpoint, "shipped", actor=maintainer)
    pinned = _preview(client, run)
    assert pinned["planned"] and "Prune now: delete 8 checkpoints" in pinned["html"]

    retention.update_retention(run, {"max_to_keep": 6}, actor=maintainer)
    policy = _preview(client, run)
    assert policy["planned"] and "Prune now: delete 5 checkpoints" in policy["html"]

    Checkpoint.objects.filter(run=run, step=3).update(status=Checkpoint.CORRUPT)
    status = _preview(client, run)
    assert status["planned"]

    Export.objects.create(checkpoint=run.checkpoints.get(step=4), path=str(checkpoint_root / "x.pb"), size_bytes=1,
                          sha256="0" * 64, outputs=["probs"])
    exported = _preview(client, run)
    assert exported["planned"]
    assert exported["response"].context["plan"].fingerprint != policy["response"].context["plan"].fingerprint

    fake_run(checkpoint_root / "other", "other", [1, 2], max_to_keep=1)  # another run: no effect here
    assert not _preview(client, run)["planned"]


def test_a_young_checkpoint_is_replanned_once_it_is_old_enough(client, maintainer, checkpoint_root):
    """``min_age`` is the plan's only input that is the clock: an entry lives until the first
    checkpoint it protected as young is old enough to be pruned, not a minute longer."""
    import datetime as dt
    import time

    from dashboard.views.retention import _plan_valid_until

    min_age = 600
    run = fake_run(checkpoint_root / "r", "r", [1, 2, 3], max_to_keep=1, min_age_seconds=min_age,
                   start=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=min_age - 3), hours_apart=0)
    facts = retention.retention_facts(run)
    young_since = facts[0].saved_at
    assert _plan_valid_until(facts, min_age, young_since + 10) == pytest.approx(young_since + min_age)
    assert _plan_valid_until(facts, min_age, young_since + min_age + 1) == float("inf")
    assert _plan_valid_until(facts, 0, young_since) == float("inf")

    client.force_login(maintainer)
    young = _preview(client, run)
    assert young["planned"] and "kept: younger than" in young["html"]
    assert "Prune now: delete" not in young["html"]
    time.sleep(max(0.0, young_since + min_age - time.time()) + 0.5)
    old = _preview(client, run)
    assert old["planned"] and "Prune now: delete 2 checkpoints" in old["html"]
