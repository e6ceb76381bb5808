"""Flow (e): tick two rows of the history, press Compare, and the page turns into the result by itself."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

OLDER, NEWER = 250, 300
JOB_TIMEOUT_MS = 60_000


def test_compare_two_ticked_steps_then_filter_changed_only(tracked, e2e_operator, e2e_worker, demo_run):
    page = tracked.page
    tracked.watch()
    tracked.login(e2e_operator.username)
    tracked.goto(f"/runs/{demo_run.name}/")

    button = page.locator("button[data-compare]")
    expect(button).to_be_disabled()
    page.get_by_label(f"Compare step {NEWER}", exact=True).check()
    page.get_by_label(f"Compare step {OLDER}", exact=True).check()
    expect(page.get_by_label("Compare step 200", exact=True)).to_be_disabled()  # two at most
    expect(button).to_have_text("Compare the two ticked")
    button.click()

    # Older first, whatever the order of the ticks; the comparison starts and the page follows it.
    older = demo_run.checkpoints.get(step=OLDER)
    newer = demo_run.checkpoints.get(step=NEWER)
    page.wait_for_url(re.compile(rf"/compare/\?a={older.pk}&b={newer.pk}$"))
    summary = page.get_by_label("Summary")
    expect(summary).to_be_visible(timeout=JOB_TIMEOUT_MS)
    compare_url = f"/compare/?a={older.pk}&b={newer.pk}"
    loads = tracked.loads()
    assert loads[-1] == compare_url
    # Opened by the ticks, then again by the page itself: it starts the comparison (an operator's
    # visit) and shows its progress until the result replaces it, with no click from the test.
    assert loads.count(compare_url) >= 2, loads

    # The summary: 15 variables, all read; training moved the weights. The page opens on the
    # model's weights only: Adam's slots, its beta powers and global_step are hidden, also from
    # the totals.
    from dashboard.models import Comparison
    from persistence.training import is_training_state

    comparison = Comparison.objects.get(a=older, b=newer)
    assert len(comparison.variables) == 15
    weights = [v for v in comparison.variables if not is_training_state(v["name"])]
    changed = sum(1 for v in weights if v.get("changed"))
    total = len(weights)
    assert 0 < changed <= total < 15
    expect(page.get_by_label("Model weights only")).to_be_checked()
    expect(_stat(summary, "model weights")).to_have_text(str(total))
    expect(_stat(summary, "changed")).to_have_text(str(changed))
    expect(_stat(summary, "steps")).to_have_text(f"+{NEWER - OLDER}")
    expect(page.locator(".metrics-table")).to_contain_text("accuracy")
    rows = page.locator("table.compare-table tbody tr")
    expect(rows).to_have_count(total)
    expect(page.locator("table.compare-table")).to_contain_text("hidden/kernel")
    expect(page.get_by_text(f"{total} of {total} shown")).to_be_visible()
    page.locator("#compare-chart").wait_for()
    tracked.shot("compare")

    # "Changed only": every row left is a changed one, and as many as the summary says.
    page.get_by_label("Changed only").check()
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"changed=1"))
    expect(rows).to_have_count(changed)
    expect(page.locator("table.compare-table tbody tr.unchanged")).to_have_count(0)
    expect(page.get_by_text(f"{changed} of {total} shown")).to_be_visible()
    expect(page.get_by_label("Changed only")).to_be_checked()
    tracked.shot("compare-changed-only")

    # Narrowed further by name, with the optimizer's slots shown again; then the pick page.
    page.get_by_label("Variable name contains").fill("Adam_1")
    page.get_by_label("Model weights only").uncheck()  # applies at once
    page.wait_for_url(re.compile(r"q=Adam_1"))
    expect(rows).to_have_count(4)
    expect(page.get_by_label("Model weights only")).not_to_be_checked()
    page.get_by_role("button", name="Choose others").click()
    page.wait_for_selector("h1 >> text=Compare checkpoints")
    expect(page.get_by_label("Checkpoint").first).to_be_visible()
    tracked.shot("compare-pick")


def _stat(summary, label: str):
    return summary.locator("div").filter(
        has=summary.page.locator("span.muted", has_text=re.compile(rf"^{re.escape(label)}"))
    ).locator("span.stat")
