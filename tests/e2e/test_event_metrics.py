"""The run page charts a trainer's full event-file curves with its checkpoints marked on them,
pruned ones as crosses, and says where a checkpoint's value was logged."""

from __future__ import annotations

import pytest

from tests import checkpoint_factory as factory
from tests.event_files import write_tf1_events, write_tf2_events

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

CHART_DATASETS = """() => {
  const chart = Chart.getChart(document.getElementById("history-chart"));
  return chart.data.datasets.map((d) => ({
    label: d.label, points: d.data.length, gone: d.data.filter((p) => p && p.gone).length,
  }));
}"""


def test_run_page_charts_full_curves_with_checkpoints_marked(tracked, e2e_viewer, make_run):
    from dashboard import scanning
    from dashboard.models import Checkpoint

    run = make_run("trainer-events")
    factory.make_seed_run(run.directory, steps=(100, 200, 300), max_to_keep=None)
    write_tf1_events(run.directory, {"loss": [(step, 5.0 / step) for step in range(1, 3001)]})
    write_tf2_events(f"{run.directory}/eval", {"accuracy": [(100, 0.5), (190, 0.6), (300, 0.7)]})
    scanning.scan(run)
    run.checkpoints.filter(step=200).update(status=Checkpoint.PRUNED)

    tracked.login(e2e_viewer.username)
    tracked.goto(f"/runs/{run.name}/")
    page = tracked.page
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('history-chart'))")
    datasets = {d["label"]: d for d in page.evaluate(CHART_DATASETS)}
    assert 1000 <= datasets["loss"]["points"] <= 2000  # the full curve, cut down by the server
    assert datasets["loss at checkpoints"]["points"] == 6  # model.ckpt- and subset.ckpt- at 3 steps
    assert datasets["loss at checkpoints"]["gone"] == 2  # the pruned step, both prefixes
    assert datasets["eval/accuracy"]["points"] == 3
    assert page.locator("#history-chart-curves").is_visible()
    assert page.locator("#history-chart-gone").is_visible()
    assert page.locator("table.history").get_by_text("from step 190").first.is_visible()
    tracked.shot("run-event-metrics")
