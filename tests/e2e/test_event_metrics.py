"""The run page charts a trainer's full event-file curves with its checkpoints marked on them,
pruned ones as crosses, and says where a checkpoint's value was logged; for a run in a bucket too
(the trainer wrote locally, its files were uploaded with their subdirectories)."""

from __future__ import annotations

from pathlib import Path

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


def test_run_page_charts_full_curves_with_checkpoints_marked(tracked, e2e_viewer, make_run, backend, tmp_path):
    from dashboard import scanning
    from dashboard.models import Checkpoint

    run = make_run("trainer-events")
    trainer = tmp_path / "trainer-events" if backend.is_s3 else Path(run.directory)
    factory.make_seed_run(trainer, steps=(100, 200, 300), max_to_keep=None)
    write_tf1_events(trainer, {"loss": [(step, 5.0 / step) for step in range(1, 3001)]})
    write_tf2_events(trainer / "eval", {"accuracy": [(100, 0.5), (190, 0.6), (300, 0.7)]})
    if backend.is_s3:
        backend.put_tree(trainer, run.name)
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


CHART_AXES = """() => {
  const chart = Chart.getChart(document.getElementById("history-chart"));
  const labels = chart.scales.x.ticks.map((t) => t.label);
  return {
    labels, xTitle: chart.options.scales.x.title.text, sizeTitle: chart.options.scales.size.title.text,
    canvasWidth: chart.canvas.clientWidth, pageWidth: document.documentElement.scrollWidth,
  };
}"""


@pytest.mark.local_only("about the chart's layout, drawn the same from either storage")
@pytest.mark.parametrize("width", [1280, 390])
def test_chart_axes_have_units_and_distinct_ticks_at_laptop_and_phone_width(tracked, e2e_viewer, make_run, width):
    from dashboard import scanning

    run = make_run(f"axes-{width}")
    factory.make_seed_run(run.directory, steps=(1000, 20000, 40000), max_to_keep=None)
    write_tf1_events(run.directory, {"loss": [(step, 5.0 / step) for step in range(1, 40001, 40)]})
    scanning.scan(run)

    tracked.page.set_viewport_size({"width": width, "height": 900})
    tracked.login(e2e_viewer.username)
    tracked.goto(f"/runs/{run.name}/")
    page = tracked.page
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('history-chart'))")
    axes = page.evaluate(CHART_AXES)
    assert axes["xTitle"].startswith("step") and axes["sizeTitle"] == "size (MB)"
    assert len(axes["labels"]) >= 3 and len(set(axes["labels"])) == len(axes["labels"]), axes["labels"]
    assert len(axes["labels"]) <= (5 if width < 520 else 11)
    assert axes["canvasWidth"] <= width and axes["pageWidth"] <= width
