"""Flow (d): edit the retention policy, preview the plan, prune, and see the history and the disk change.

The run is a copy of the demo directory (60 checkpoints, steps 5…300, one ``.meta`` at step 5), in a
local directory or in a bucket: the session's shared demo run is never pruned.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

KEPT_STEPS = [280, 285, 290, 295, 300]  # the newest 5
JOB_TIMEOUT_MS = 60_000


def test_edit_policy_preview_prune_and_see_history_and_disk_change(
    tracked, e2e_maintainer, e2e_worker, make_run, backend
):
    run = make_run("prunable", copy_demo=True)
    directory = run.directory
    assert len([n for n in backend.files(directory) if n.endswith(".index")]) == 60
    page = tracked.page
    tracked.login(e2e_maintainer.username)

    # The policy: newest 5, nothing young protected, no other rule.
    tracked.goto(f"/runs/{run.name}/")
    page.get_by_role("button", name="Retention").click()
    page.wait_for_selector("h1 >> text=Retention policy")
    fill_newest_only_policy(page, 5)
    tracked.shot("retention-policy")
    page.get_by_role("button", name="Save policy").click()

    # The preview: every checkpoint with its decision and reasons, and the totals.
    page.wait_for_selector("h1 >> text=Prune preview")
    expect(page.get_by_text("Retention policy saved")).to_be_visible()
    expect(page.locator(".policy-summary")).to_contain_text("newest 5")
    expect(_stat(page, "checkpoints kept")).to_have_text("5")
    expect(_stat(page, "to delete")).to_have_text("55")
    expect(_stat(page, "files to delete")).to_have_text("110")
    expect(_stat(page, "freed")).to_have_text(re.compile(r"^\d+(\.\d)? (kB|MB)$"))
    plan_rows = page.locator("table.prune-plan tbody tr")
    expect(plan_rows).to_have_count(60)
    expect(page.locator("tr.plan-keep")).to_have_count(5)
    expect(page.locator("tr.plan-delete")).to_have_count(55)
    newest = _row(page, "tr.plan-keep", "model.ckpt-300")
    expect(newest).to_contain_text("kept: newest 5")
    expect(newest).to_contain_text("kept: latest in checkpoint")
    oldest = _row(page, "tr.plan-delete", "model.ckpt-5")
    expect(oldest).to_contain_text("deleted: beyond max_to_keep")
    expect(oldest.get_by_text(".meta stays")).to_be_visible()  # later checkpoints restore with it
    expect(_row(page, "tr.plan-delete", "model.ckpt-275")).to_contain_text("deleted: beyond max_to_keep")
    tracked.shot("prune-preview")
    page.get_by_role("link", name="to delete (55)").click()
    expect(plan_rows).to_have_count(55)

    # Prune now (it asks for confirmation), then the job page follows the prune until it ends.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Prune now: delete 55 checkpoints").click()
    page.wait_for_selector("h1 >> text=/Prune job #\\d+/")
    expect(page.locator(".job-progress .badge")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".job-progress progress")).to_have_attribute("value", "100")
    tracked.shot("prune-job")

    # The history: five on disk, the rest marked pruned.
    page.get_by_role("link", name=run.name, exact=True).first.click()
    page.wait_for_selector(f"h1 >> text={run.name}")
    expect(_stat(page, "checkpoints on disk")).to_have_text("5")
    history = page.locator("table.history tbody tr")
    expect(history).to_have_count(50)  # still listed, newest first
    expect(page.locator("table.history tbody tr.status-pruned")).to_have_count(45)
    for step in KEPT_STEPS:
        expect(_row(page, "table.history tr.status-present", f"model.ckpt-{step}")).to_have_count(1)
    expect(_row(page, "table.history tr.status-pruned", "model.ckpt-275").locator(".badge")).to_have_text("pruned")
    # Pruned rows show that their files are gone, not their old size; the chart keeps their points.
    expect(_row(page, "table.history tr.status-pruned", "model.ckpt-275").locator(".files-gone")).to_have_text("gone")
    expect(page.locator("#history-chart-gone")).to_be_visible()
    tracked.shot("run-after-prune")

    # The disk (or bucket): exactly what the plan kept (the newest five, the .meta they restore
    # with, the state file), and the plan the job executed deleted everything else.
    expected = {"checkpoint", "model.ckpt-5.meta"}
    for step in KEPT_STEPS:
        expected |= {f"model.ckpt-{step}.index", f"model.ckpt-{step}.data-00000-of-00001"}
    on_disk = backend.files(directory)
    assert on_disk == expected
    from dashboard.models import Job

    job = Job.objects.get(run=run, kind=Job.PRUNE)
    assert job.status == Job.FINISHED and job.result["checkpoints_deleted"] == 55
    planned = set(job.result["plan"]["files_to_delete"])
    assert len(planned) == 2 * 55 and not planned & on_disk
    assert backend.read_text(directory, "checkpoint").splitlines()[0].strip().endswith('model.ckpt-300"')


def fill_newest_only_policy(page, newest: int) -> None:
    """On the retention page: keep the newest ``newest``, no other rule, nothing young protected."""
    page.get_by_label("Keep the newest").fill(str(newest))
    page.get_by_label("Also keep one every … hours").fill("")
    page.get_by_label("Keep every … steps").fill("")
    page.get_by_label("Keep the best").fill("")
    page.get_by_label("Never delete younger than (seconds)").fill("0")
    page.get_by_label("Prune automatically after every scan").uncheck()


def _row(page, row_selector: str, prefix: str):
    """The table row of exactly checkpoint ``prefix`` (``model.ckpt-5`` is not ``model.ckpt-50``)."""
    return page.locator(f"{row_selector}:has(code:text-is('{prefix}'))")


def _stat(page, label: str):
    """The figure of a ``.stats`` tile, by its exact label."""
    return page.locator(".stats > div").filter(has=page.locator("span.muted", has_text=re.compile(f"^{label}$"))).locator(".stat")
