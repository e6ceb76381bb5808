"""Checkpoints whose files are gone (pruned, or deleted behind the dashboard's back): the pages say
so and show what is left, and the run chart keeps their metrics, marked as gone."""

from __future__ import annotations

import io
import os

import pytest
from django.core.management import call_command
from django.urls import reverse

from dashboard import scanning
from dashboard.models import Checkpoint, Run
from dashboard.templatetags.dashboard import size as size_label
from tests.checkpoint_factory import make_seed_run

pytestmark = [pytest.mark.tf, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def pruned_run(checkpoint_root) -> Run:
    """Seed run 100..400: 300 deleted by hand (missing), then a prune to the newest one, which
    deletes 200 and keeps only the .meta of 100 (400 restores with it)."""
    made = make_seed_run(checkpoint_root / "seed")
    run = Run.objects.create(name="seed", directory=made.directory, min_age_seconds=0)
    scanning.scan(run)
    for name in os.listdir(made.directory):
        if name.startswith("model.ckpt-300."):
            os.remove(os.path.join(made.directory, name))
    scanning.scan(run, full=True)
    for c in run.checkpoints.filter(prefix__startswith="model.ckpt-"):
        # As a save job records them: what training measured at each step.
        Checkpoint.objects.filter(pk=c.pk).update(metrics={"loss": 1.0 / c.step, "accuracy": c.step / 1000})
    call_command("prune", "seed", "--max-to-keep", "1", stdout=io.StringIO())
    statuses = dict(run.checkpoints.filter(prefix__startswith="model.ckpt-").values_list("step", "status"))
    assert statuses == {100: "pruned", 200: "pruned", 300: "missing", 400: "present"}
    return run


def test_checkpoint_page_says_the_files_are_gone_and_what_is_left(client, viewer, pruned_run):
    client.force_login(viewer)
    by_step = {c.step: c for c in pruned_run.checkpoints.filter(prefix__startswith="model.ckpt-")}

    html = client.get(by_step[200].get_absolute_url()).content.decode()
    assert "The files of this checkpoint are gone (pruned)" in html and "Nothing of it is left on disk" in html
    assert f"left on disk (was {size_label(by_step[200].size_bytes)})" in html
    assert "<span class=\"muted\">on disk</span>" not in html

    html = client.get(by_step[300].get_absolute_url()).content.decode()
    assert "The files of this checkpoint are gone (missing)" in html and "Nothing of it is left on disk" in html

    html = client.get(by_step[100].get_absolute_url()).content.decode()
    meta_size = os.path.getsize(os.path.join(pruned_run.directory, "model.ckpt-100.meta"))
    assert "Still on disk: <code>model.ckpt-100.meta</code>" in html
    assert "later checkpoints restore with its meta graph" in html
    assert f"{size_label(meta_size)}</span><span class=\"muted\">left on disk" in html

    html = client.get(by_step[400].get_absolute_url()).content.decode()
    assert "<span class=\"muted\">on disk</span>" in html and "are gone" not in html


def test_history_shows_gone_instead_of_an_old_size(client, viewer, pruned_run):
    client.force_login(viewer)
    html = client.get(reverse("run", args=["seed"])).content.decode()
    rows = {step: html.split(f">model.ckpt-{step}</code>", 1)[1].split("</tr>", 1)[0] for step in (100, 200, 300, 400)}
    for step in (100, 200, 300):
        size = pruned_run.checkpoints.get(step=step, prefix__startswith="model.ckpt-").size_bytes
        assert ">gone</span>" in rows[step] and f"it was {size_label(size)}" in rows[step]
    assert ">gone</span>" not in rows[400]


def test_run_chart_keeps_metrics_of_gone_steps_and_marks_them(client, viewer, pruned_run):
    client.force_login(viewer)
    data = client.get(reverse("run-chart", args=["seed"])).json()
    at = {}
    for i, step in enumerate(data["steps"]):
        at.setdefault(step, []).append(i)
    for step in (100, 200, 300, 400):
        # The seed also writes a subset.ckpt-STEP at each step; the model.ckpt row carries the loss.
        with_loss = [i for i in at[step] if data["metrics"]["loss"][i] is not None]
        assert len(with_loss) == 1
        i = with_loss[0]
        assert data["metrics"]["loss"][i] == pytest.approx(1.0 / step)
        assert data["gone"][i] is (step != 400)
        assert (data["size_bytes"][i] is None) is (step != 400)
    assert data["total"] == len(data["steps"])

    html = client.get(reverse("run", args=["seed"])).content.decode()
    assert 'id="history-chart-gone"' in html and "marks steps whose files are gone" in html
