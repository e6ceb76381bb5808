"""Flow (f): start a small save job from the run page, watch it, and find the new checkpoints in the history.

Into a run in a local directory, and into one in a bucket. The job page follows the job by itself (htmx polling, then one reload of its own when the job
ends, to show what it wrote). The history table is not live: it is opened once the job has ended.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

STEPS, SAVE_EVERY = 40, 10
SAVED_STEPS = [10, 20, 30, 40]
JOB_TIMEOUT_MS = 60_000


def test_start_a_save_job_and_see_new_checkpoints_with_metrics(tracked, e2e_operator, e2e_worker, make_run, backend):
    run = make_run("fresh-save")
    page = tracked.page
    tracked.watch()
    tracked.login(e2e_operator.username)

    tracked.goto(f"/runs/{run.name}/")
    expect(page.get_by_role("heading", name="No checkpoints found yet")).to_be_visible()
    tracked.shot("run-empty")
    page.get_by_role("button", name="Train & save").click()
    page.wait_for_selector("h1 >> text=Train & save")
    page.get_by_label("Steps", exact=True).fill(str(STEPS))
    page.get_by_label("Save every K steps").fill(str(SAVE_EVERY))
    page.get_by_label("Max to keep").fill("0")  # keep them all
    tracked.shot("save-form")
    page.get_by_role("button", name="Start save job").click()

    page.wait_for_selector("h1 >> text=/Save job #\\d+/")
    job_url = page.url
    expect(page.get_by_text(re.compile(rf"^Save job #\d+ started: {STEPS} steps"))).to_be_visible()
    progress = page.locator(".job-progress")
    expect(progress.locator(".badge")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    expect(progress.locator("progress")).to_have_attribute("value", "100")
    seen = tracked.progress_values("save #")
    assert seen[0] < 100 and seen[-1] == 100, f"the bar did not move from the start to the end: {seen}"
    # Nobody reloaded the job page but the page itself, once, when the job ended.
    job_path = job_url.removeprefix(tracked.base_url)
    assert tracked.loads().count(job_path) <= 2

    written = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Checkpoints written")))
    expect(written.locator("tbody tr")).to_have_count(len(SAVED_STEPS))
    for step in SAVED_STEPS:
        expect(written.get_by_role("link", name=f"model.ckpt-{step}", exact=True)).to_be_visible()
    tracked.shot("save-job")

    # The history, opened once after the job: the new steps with their training metrics.
    page.get_by_role("link", name=run.name, exact=True).first.click()
    page.wait_for_selector(f"h1 >> text={run.name}")
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(len(SAVED_STEPS))
    headers = [h.strip() for h in page.locator("table.history thead th").all_inner_texts()]
    for metric in ("accuracy", "loss"):
        assert metric in headers, headers
    from dashboard.models import Checkpoint

    for row, step in zip(rows.all(), sorted(SAVED_STEPS, reverse=True), strict=True):
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[1] == str(step) and cells[2] == f"model.ckpt-{step}"
        checkpoint = Checkpoint.objects.get(run=run, step=step)
        for metric in ("accuracy", "loss"):
            shown = cells[headers.index(metric)]
            assert shown == f"{checkpoint.metrics[metric]:.4f}", (step, metric, shown)
    expect(page.locator(".stats div", has_text="latest step").locator(".stat")).to_have_text(str(STEPS))
    page.locator("#history-chart").wait_for()
    tracked.shot("run-after-save")

    # On disk (or in the bucket): what TensorFlow's Saver wrote, and the state file points at the last one.
    names = backend.files(run.directory)
    for step in SAVED_STEPS:
        assert {f"model.ckpt-{step}.index", f"model.ckpt-{step}.data-00000-of-00001"} <= names
    state = backend.read_text(run.directory, "checkpoint")
    assert state.splitlines()[0].strip().endswith(f'model.ckpt-{STEPS}"')
