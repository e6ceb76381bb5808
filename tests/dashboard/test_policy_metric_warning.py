"""A best-N retention rule on a metric the run never recorded keeps nothing: the policy form and
the prune preview say so (the policy is still saved: metrics may arrive later)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard import retention, scanning
from dashboard.models import Checkpoint, Run
from tests.checkpoint_factory import make_seed_run

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

POLICY = {
    "max_to_keep": "1", "keep_checkpoint_every_n_hours": "", "keep_every_n_steps": "", "keep_best_n": "2",
    "best_metric": "accuracy", "best_mode": "max", "min_age_seconds": "0", "protect_exported": "on",
}
WARNING = "No checkpoint of this run has metric “{}”; the best-2 rule keeps nothing."


@pytest.fixture
def run(checkpoint_root) -> Run:
    made = make_seed_run(checkpoint_root / "seed")
    run = Run.objects.create(name="seed", directory=made.directory, min_age_seconds=0)
    scanning.scan(run)
    for c in run.checkpoints.exclude(step=None):
        Checkpoint.objects.filter(pk=c.pk).update(metrics={"loss": 1.0 / c.step})  # as training recorded
    return run


def test_unrecorded_metric_is_saved_with_a_warning_on_the_form_and_the_preview(client, maintainer, run):
    client.force_login(maintainer)
    response = client.post(reverse("run-retention", args=["seed"]), POLICY, follow=True)
    html = response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("run-prune", args=["seed"])
    assert WARNING.format("accuracy") in html and "Metrics it records: loss." in html
    run.refresh_from_db()
    assert (run.keep_best_n, run.best_metric) == (2, "accuracy")
    # The plan indeed keeps nothing by that rule.
    # The plan indeed keeps nothing by that rule (the page shows a cached summary of this very plan).
    plan = retention.plan_retention(run)
    assert response.context["plan"].fingerprint == plan.fingerprint
    assert "best 2 by accuracy" not in " ".join(r for d in plan.decisions for r in d.reasons)

    html = client.get(reverse("run-retention", args=["seed"])).content.decode()
    assert WARNING.format("accuracy") in html


def test_a_recorded_metric_gives_no_warning(client, maintainer, run):
    client.force_login(maintainer)
    response = client.post(reverse("run-retention", args=["seed"]), {**POLICY, "best_metric": "loss",
                                                                      "best_mode": "min"}, follow=True)
    html = response.content.decode()
    assert "No checkpoint of this run has metric" not in html
    assert "kept: best 2 by loss (min)" in html  # the page's rows carry each decision's reasons
    run.refresh_from_db()
    plan = retention.plan_retention(run)
    assert response.context["plan"].fingerprint == plan.fingerprint
    assert "kept: best 2 by loss (min)" in " ".join(r for d in plan.decisions for r in d.reasons)
    assert "No checkpoint of this run has metric" not in client.get(reverse("run-retention", args=["seed"])).content.decode()


def test_a_run_without_any_metric_says_so(client, maintainer, run):
    Checkpoint.objects.filter(run=run).update(metrics={})
    client.force_login(maintainer)
    html = client.post(reverse("run-retention", args=["seed"]), POLICY, follow=True).content.decode()
    assert WARNING.format("accuracy") in html and "It records no metrics." in html
