"""What a new user meets in the first hour, page by page: the checkpoint header, badges, job pages,
the jobs list, the run page's job line, the save form, tracking a directory and trusting graphs.
What concerns a run's checkpoints is met with a run in a local directory and with one in a bucket."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT_MS = 60_000


def test_checkpoint_header_pin_is_a_button_and_verify_offers_the_graphs_outputs(
    tracked, e2e_maintainer, e2e_worker, demo_run
):
    page = tracked.page
    tracked.login(e2e_maintainer.username)
    latest = demo_run.checkpoints.get(step=300)
    tracked.goto(latest.get_absolute_url())

    # "latest (state file)", not the state file's bare name.
    expect(page.locator(".page-head .badges")).to_contain_text("latest (state file)")
    expect(page.locator(".page-head .badges")).not_to_contain_text("latest in checkpoint")

    # Pin: a closed button; pressing it opens the reason field.
    reason = page.get_by_label(f"Reason to pin {latest.prefix}")
    expect(reason).to_be_hidden()
    page.locator(".pin-button summary", has_text="Pin…").click()
    expect(reason).to_be_visible()

    # Verify: a labelled choice of the graph's outputs (as the freeze form suggests them), or none.
    choice = page.get_by_label("Output to run after restoring")
    options = choice.locator("option").all_inner_texts()
    assert options[0] == "no output (restore only)" and "probs" in options, options
    choice.select_option("probs")
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.locator(".messages")).to_contain_text(f"Verifying {latest.prefix}")

    # The job page: parameters as a table, a duration, and where the result is.
    page.locator(".job-progress a", has_text=re.compile(r"^restore #\d+$")).first.click()
    page.wait_for_selector("h1 >> text=/Restore job #\\d+/")
    expect(page.locator(".job-progress .badge")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    params = page.locator(".job-params table.readable")
    expect(params.locator("th", has_text="output")).to_be_visible()
    expect(params.locator("td")).to_have_text("probs")
    assert "{'output'" not in page.content()  # no Python repr anywhere
    expect(page.locator("dd.job-duration")).to_have_text(re.compile(r"^\d+(\.\d)? s$|^\d+ min \d\d s$"))
    page.get_by_role("link", name="on the checkpoint's page").click()
    expect(page.locator("#verification")).to_contain_text("ran probs")


def test_a_checkpoint_whose_files_are_gone_says_so(tracked, e2e_maintainer, make_run, backend):
    run = make_run("gone-files", copy_demo=True)
    victim = run.checkpoints.get(step=100)
    for f in victim.files:
        backend.delete(run.directory, f["name"])
    from dashboard import scanning

    scanning.scan(run, full=True)
    page = tracked.page
    tracked.login(e2e_maintainer.username)
    tracked.goto(victim.get_absolute_url())
    expect(page.locator(".page-head .badges")).to_contain_text("files gone")
    stats = page.locator("section.stats")
    expect(stats).not_to_contain_text(re.compile(r"\bon disk$", re.M))
    expect(stats).to_contain_text("left on disk")


@pytest.mark.local_only("about the run page's job line, drawn from job rows alone")
def test_run_page_folds_ended_jobs_into_one_line_without_stale_scans(tracked, e2e_maintainer, demo_run):
    from django.utils import timezone

    from dashboard.models import Job

    now = timezone.now()
    stale = Job.objects.create(kind=Job.SCAN, run=demo_run, status=Job.FINISHED, progress=100,
                               message="0 checkpoints found", ended_at=now - timezone.timedelta(hours=2))
    older = Job.objects.create(kind=Job.SCAN, run=demo_run, status=Job.FINISHED, progress=100,
                               message="60 checkpoints found", ended_at=now - timezone.timedelta(hours=1))
    newest = Job.objects.create(kind=Job.SCAN, run=demo_run, status=Job.FINISHED, progress=100,
                                message="60 checkpoints found", ended_at=now)
    page = tracked.page
    tracked.login(e2e_maintainer.username)
    tracked.goto(demo_run.get_absolute_url())
    line = page.locator(".recent-jobs-line")
    expect(line).to_contain_text("Recent jobs:")
    expect(line.get_by_role("link", name=f"scan #{newest.pk}")).to_be_visible()
    for hidden in (stale, older):
        expect(line.get_by_role("link", name=f"scan #{hidden.pk}")).to_have_count(0)
    # Ended jobs are a line, not a wall of full progress bars.
    expect(page.locator(".recent-jobs progress")).to_have_count(0)


@pytest.mark.local_only("about the jobs list's layout, drawn from job rows alone")
def test_jobs_list_filter_is_one_row_and_names_each_job_once(tracked, e2e_maintainer, demo_run):
    from dashboard.models import Job

    job = Job.objects.create(kind=Job.SCAN, run=demo_run, status=Job.FINISHED, progress=100,
                             message="60 checkpoints found")
    page = tracked.page
    tracked.login(e2e_maintainer.username)
    tracked.goto("/jobs/")
    boxes = [c.bounding_box() for c in page.locator("form.job-filters > :visible").all()]
    middles = [box["y"] + box["height"] / 2 for box in boxes]
    assert len(boxes) >= 4 and max(middles) - min(middles) < 10, f"the filter wraps at 1280 px: {boxes}"
    row = page.locator("tbody tr").first
    assert row.inner_text().count(f"#{job.pk}") == 1, row.inner_text()
    assert row.inner_text().count("scan #") == 1, row.inner_text()


def test_save_form_continues_from_latest_and_shows_errors_at_their_field(tracked, e2e_operator, demo_run, backend):
    page = tracked.page
    tracked.login(e2e_operator.username)
    tracked.goto(f"/runs/{demo_run.name}/save/")
    latest = demo_run.checkpoints.get(step=300)
    expect(page.get_by_label("Continue from")).to_have_value(str(latest.pk))
    rotation = page.locator("#rotation-preview")
    if backend.is_s3:
        expect(rotation).to_contain_text("Nothing in the bucket is deleted by a save")
    else:
        expect(rotation).to_contain_text("Existing checkpoints are never deleted by a save")
    expect(rotation).to_contain_text("Pinned, exported and latest checkpoints")

    page.get_by_label("Steps", exact=True).fill("0")
    page.get_by_role("button", name="Start save job").click()
    page.wait_for_selector("#field-steps .error")
    expect(page.locator("#field-steps .error")).to_contain_text("greater than or equal to 1")
    expect(page.locator(".job-form > .message.error")).to_have_count(0)


def test_track_a_directory_shows_roots_and_offers_untracked_ones(
    tracked, e2e_operator, e2e_worker, demo_run, demo_directory, e2e_roots, backend
):
    if backend.is_s3:
        _track_a_prefix_in_the_bucket(tracked, e2e_operator, demo_directory, e2e_roots, backend)
        return
    untracked = e2e_roots / "team" / "bert-small"
    shutil.rmtree(untracked, ignore_errors=True)
    shutil.copytree(demo_directory[0], untracked)
    try:
        page = tracked.page
        tracked.login(e2e_operator.username)
        tracked.goto("/runs/new/")
        expect(page.locator("code.checkpoint-root")).to_have_text(_roots(e2e_roots))
        placeholder = page.get_by_label("Directory").get_attribute("placeholder")
        assert placeholder.startswith(str(e2e_roots) + "/"), placeholder
        offered = page.locator("section.untracked tbody tr")
        expect(offered.filter(has_text=str(untracked))).to_have_count(1)
        expect(offered.filter(has_text=demo_run.directory)).to_have_count(0)  # tracked already
        page.get_by_role("button", name=f"Track {untracked} as bert-small").click()
        page.wait_for_selector("h1 >> text=bert-small")
        expect(page.get_by_text("Run “bert-small” registered")).to_be_visible()
    finally:
        shutil.rmtree(e2e_roots / "team", ignore_errors=True)


def _roots(e2e_roots) -> list[str]:
    """The roots the form names: the local directory and the bucket prefix, both runs may live in."""
    from django.conf import settings

    return [str(e2e_roots), *settings.CHECKPOINT_OBJECT_ROOTS]


def _track_a_prefix_in_the_bucket(tracked, operator, demo_directory, e2e_roots, backend) -> None:
    """A bucket root is listed for untracked runs too (a bounded number of LISTs): the prefix is
    offered and tracked with one click; the worker's first scan fills the page, which updates by itself."""
    url = backend.put_tree(demo_directory[0], "team/bert-small")
    try:
        page = tracked.page
        tracked.login(operator.username)
        tracked.goto("/runs/new/")
        expect(page.locator("code.checkpoint-root")).to_have_text(_roots(e2e_roots))
        offered = page.locator("section.untracked tbody tr")
        expect(offered.filter(has_text=url)).to_have_count(1)
        page.get_by_role("button", name=f"Track {url} as bert-small").click()
        page.wait_for_selector("h1 >> text=bert-small")
        expect(page.get_by_text("Run “bert-small” registered")).to_be_visible()
        expect(page.locator("table.history tbody tr")).to_have_count(50, timeout=JOB_TIMEOUT_MS)
        expect(page.get_by_text("This run is in object storage")).to_be_visible()
    finally:
        backend.clear("team/bert-small")


@pytest.mark.local_only("about a run's trust setting, which no file is read for")
def test_trusting_graphs_explains_what_it_allows_and_asks_first(tracked, e2e_maintainer, demo_run):
    page = tracked.page
    tracked.login(e2e_maintainer.username)
    tracked.goto(demo_run.get_absolute_url())
    questions = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.get_by_role("button", name="Trust graphs").click()
    expect(page.locator(".badge", has_text="trusted graphs")).to_have_count(0)
    assert "file-system ops" in questions[0] and "Python ops" in questions[0] and "worker" in questions[0]
    demo_run.refresh_from_db()
    assert not demo_run.trusted

    page.once("dialog", lambda d: answer(d, True))
    page.get_by_role("button", name="Trust graphs").click()
    expect(page.locator(".badge", has_text="trusted graphs")).to_be_visible()
    demo_run.refresh_from_db()
    assert demo_run.trusted


def test_heatmap_scales_each_variable_offers_log_and_its_cells_open_the_pair(tracked, e2e_operator, e2e_worker, demo_run):
    page = tracked.page
    tracked.login(e2e_operator.username)
    tracked.goto(f"/runs/{demo_run.name}/steps/")
    page.get_by_label("Newest").select_option("10")
    page.get_by_role("button", name="Compute").click()
    table = page.locator("table.heatmap")
    expect(table).to_be_visible(timeout=JOB_TIMEOUT_MS)
    # Full width, each variable on its own scale (its largest change takes the darkest colour).
    assert table.bounding_box()["width"] > 0.9 * (page.viewport_size["width"] - 60)
    expect(page.get_by_label("Colour legend")).to_contain_text("of the variable's largest change")
    for row in page.locator("table.heatmap tbody tr").all():
        if row.locator("td.cell.hm-3f0013, td.cell.hm-eaecf0").count() == 0:
            raise AssertionError(f"no darkest cell in {row.inner_text()[:40]}")

    log = page.get_by_role("switch", name=re.compile("log"))
    expect(log).to_have_attribute("aria-checked", "false")
    log.click()
    page.wait_for_url(re.compile(r"log=1"))
    expect(page.get_by_role("switch", name=re.compile("log"))).to_have_attribute("aria-checked", "true")
    page.get_by_role("link", name="same for all variables").click()
    page.wait_for_url(re.compile(r"scale=absolute"))
    expect(page.get_by_label("Colour legend")).to_contain_text("10⁻⁶ – 10⁻⁵")

    cell = page.locator("table.heatmap tbody tr").first.locator("a.cell-link").last
    cell.click()
    page.wait_for_url(re.compile(r"/compare/\?a=\d+&b=\d+$"))
    expect(page.get_by_role("heading", name="Compare checkpoints")).to_be_visible()
    expect(page.locator(".compare-side").nth(1)).to_contain_text("model.ckpt-300")
