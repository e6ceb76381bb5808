"""From checkpoint to serving in the browser: export a SavedModel, alias it prod, publish it to a TF
Serving target, see the version labelled; prune the run and see the aliased checkpoint kept. From a
run in a local directory and from one in a bucket."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.e2e.test_prune import _row, _stat, fill_newest_only_policy

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

STEP = 150
JOB_TIMEOUT_MS = 60_000


def test_export_saved_model_alias_publish_then_prune_keeps_the_aliased_step(
    tracked, e2e_maintainer, e2e_worker, make_run, backend
):
    run = make_run("servable", copy_demo=True)
    page = tracked.page
    tracked.login(e2e_maintainer.username)

    # Export the step as a SavedModel from its page.
    tracked.goto(f"/runs/{run.name}/")
    page.get_by_role("link", name=f"model.ckpt-{STEP}", exact=True).click()
    page.get_by_role("button", name="Freeze / export…").click()
    page.wait_for_selector(f"h1 >> text=Export model.ckpt-{STEP}")
    page.get_by_label("SavedModel", exact=False).check()
    page.get_by_role("button", name="Start export job").click()
    page.wait_for_selector(f"h1 >> text=model.ckpt-{STEP}")
    exports = page.locator("#checkpoint-exports")
    expect(exports).to_contain_text("probs.savedmodel", timeout=JOB_TIMEOUT_MS)
    expect(exports.locator(".badge.ok")).to_contain_text("verified", timeout=10_000)

    # Alias it prod.
    page.get_by_label(f"Alias to point at model.ckpt-{STEP}").fill("prod")
    page.get_by_role("button", name="Set alias").click()
    expect(page.locator(".messages")).to_contain_text(f"Alias prod now points at model.ckpt-{STEP}")
    expect(page.locator("p.badges .badge.alias")).to_have_text("prod")
    tracked.shot("checkpoint-alias")

    # A serving target for the run, and the export published to it: version = step, labelled prod.
    tracked.goto(f"/runs/{run.name}/")
    page.get_by_role("button", name="Publish to TF Serving…").click()
    page.get_by_role("button", name="Create serving target").click()
    page.wait_for_selector("h1 >> text=servable")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".messages")).to_contain_text(f"Version {STEP} of servable is published")
    version_row = page.locator("table.serving-versions tbody tr", has_text=str(STEP))
    expect(version_row.locator(".badge.alias")).to_have_text("prod")
    expect(version_row).to_contain_text("kept: label prod")
    tracked.shot("serving-target")
    from django.conf import settings

    assert os.path.isfile(settings.SERVING_ROOT / "servable" / str(STEP) / "saved_model.pb")
    assert "version_labels" in (settings.SERVING_ROOT / "models.config").read_text()

    # Prune the run down to its newest 5: the aliased step stays, and says why.
    tracked.goto(f"/runs/{run.name}/retention/")
    fill_newest_only_policy(page, 5)
    page.get_by_role("button", name="Save policy").click()
    page.wait_for_selector("h1 >> text=Prune preview")
    kept = _row(page, "tr.plan-keep", f"model.ckpt-{STEP}")
    expect(kept).to_contain_text("kept: alias prod")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Prune now").click()
    page.wait_for_selector("h1 >> text=/Prune job #\\d+/")
    expect(page.locator(".job-progress .badge")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    page.get_by_role("link", name=run.name, exact=True).first.click()
    expect(_stat(page, "checkpoints on disk")).to_have_text("6")
    assert backend.exists(run.directory, f"model.ckpt-{STEP}.index")
