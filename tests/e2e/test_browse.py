"""Flow (a): log in, runs list → run → page 2 of the history → checkpoint detail (a run in a local
directory and one in a bucket)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]


def test_browse_history_to_a_checkpoint(tracked, e2e_maintainer, demo_run, backend):
    page = tracked.page
    tracked.goto("/")
    assert "/accounts/login/" in page.url
    tracked.shot("login")
    tracked.login(e2e_maintainer.username)

    page.get_by_role("link", name="antispam").first.wait_for()
    assert page.locator("td", has_text="60").first.is_visible()
    tracked.shot("runs")

    page.get_by_role("link", name="antispam", exact=True).click()
    page.wait_for_selector("table.history")
    page.locator("#history-chart").wait_for()
    assert page.locator("table.history tbody tr").count() == 50
    assert page.get_by_text("latest (state file)", exact=True).first.is_visible()
    if backend.is_s3:
        assert page.get_by_text("This run is in object storage").is_visible()
        assert page.get_by_text(demo_run.directory).first.is_visible()
    tracked.shot("run-history")

    page.get_by_role("link", name="Next ›").click()
    page.wait_for_url("**after=**")
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 10
    assert "model.ckpt-5" in rows.last.inner_text()
    page.get_by_role("link", name="‹ Previous").click()
    page.wait_for_url("**before=**")
    assert page.locator("table.history tbody tr").count() == 50
    page.get_by_role("link", name="Next ›").click()
    page.wait_for_url("**after=**")
    assert page.locator("table.history tbody tr").count() == 10

    page.get_by_role("link", name="model.ckpt-25", exact=True).click()
    page.wait_for_selector("h1 >> text=model.ckpt-25")
    assert page.get_by_text("hidden/kernel/Adam_1").is_visible()
    assert page.get_by_text("meta graph of").is_visible()
    tracked.shot("checkpoint")


@pytest.mark.local_only("about signing in, not about where checkpoints are stored")
def test_anonymous_visitors_see_the_login_page_everywhere(tracked, demo_run):
    for path in ("/", "/runs/antispam/", "/jobs/"):
        tracked.goto(path)
        assert "/accounts/login/" in tracked.page.url
