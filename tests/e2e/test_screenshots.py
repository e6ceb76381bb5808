"""Every page, at a laptop's width (1280 px) and a phone's (390 px): screenshots for the README and
for review (tests/e2e/screenshots/NAME-WIDTH.png), and no page wider than a phone's screen."""

from __future__ import annotations

import pytest

from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

WIDTHS = (1280, 390)
# The innermost elements that stick out on the right, to say what made a page too wide.
WIDEST_SCRIPT = """
Array.from(document.querySelectorAll("body *"))
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .filter((e) => !Array.from(e.children).some((c) => c.getBoundingClientRect().right > window.innerWidth + 1))
  .slice(0, 4)
  .map((e) => `${e.tagName.toLowerCase()}.${e.className || ""} "${(e.textContent || "").trim().slice(0, 30)}"`)
"""


def _finished_jobs(run, checkpoint, older):
    """A freeze, a comparison, a step-over-step heatmap and a verify, run by the real worker."""
    from dashboard import jobs
    from dashboard.jobs import STEP_OVER_STEP_MODE
    from dashboard.models import Job

    started = [
        jobs.start(Job.FREEZE, run=run, checkpoint=checkpoint,
                   params={"outputs": ["probs"], "clear_devices": True, "variables_allowlist": [], "variables_denylist": []}),
        jobs.start(Job.COMPARE, run=run, checkpoint=checkpoint, params={"a": older.pk, "b": checkpoint.pk}),
        jobs.start(Job.COMPARE, run=run, params={"mode": STEP_OVER_STEP_MODE, "last": 12}),
        jobs.start(Job.RESTORE, run=run, checkpoint=checkpoint, params={"output": "probs"}),
    ]
    ids = [job.pk for job in started]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status__in=Job.ENDED).count() == len(ids), 180,
             what="the jobs behind the pages")
    ended = {job.pk: job for job in Job.objects.filter(pk__in=ids)}
    assert all(job.status == Job.FINISHED for job in ended.values()), [(j.kind, j.error) for j in ended.values()]
    return [ended[pk] for pk in ids]


@pytest.mark.local_only("pictures of the pages for the README and for review: one set is enough")
def test_every_page_at_laptop_and_phone_width(tracked, e2e_maintainer, e2e_worker, demo_run):
    from dashboard.models import Export

    checkpoint = demo_run.checkpoints.get(step=300)
    older = demo_run.checkpoints.get(step=250)
    freeze, _, _, _ = _finished_jobs(demo_run, checkpoint, older)
    export = Export.objects.get(pk=freeze.result["export"]["id"])
    run_url = demo_run.get_absolute_url()
    checkpoint_url = checkpoint.get_absolute_url()
    pages = [
        ("runs", "/"),
        ("track-directory", "/runs/new/"),
        ("run-history", run_url),
        ("checkpoint", checkpoint_url),
        ("freeze-form", f"{checkpoint_url}freeze/"),
        ("partial-restore", f"{checkpoint_url}partial-restore/"),
        ("resave", f"{checkpoint_url}resave/"),
        ("save-form", f"{run_url}save/"),
        ("retention-policy", f"{run_url}retention/"),
        ("prune-preview", f"{run_url}prune/"),
        ("compare-pick", "/compare/"),
        ("compare", f"/compare/?a={older.pk}&b={checkpoint.pk}"),
        ("heatmap", f"{run_url}steps/"),
        ("jobs", "/jobs/"),
        ("job", freeze.get_absolute_url()),
        ("exports", "/exports/"),
        ("export", export.get_absolute_url()),
        ("audit", "/audit/"),
        ("error-404", "/no-such-page/"),
    ]
    page = tracked.page
    tracked.expected_statuses = {404}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.context.clear_cookies()
        tracked.goto("/")
        tracked.shot(f"login-{width}")
        tracked.login(e2e_maintainer.username)
        too_wide = []
        for name, path in pages:
            response = tracked.goto(path)
            assert response.status == (404 if name == "error-404" else 200), (name, response.status)
            page.wait_for_load_state("networkidle")
            tracked.shot(f"{name}-{width}")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 1:
                too_wide.append(f"{name} ({overflow} px: {', '.join(page.evaluate(WIDEST_SCRIPT))})")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        assert not too_wide, f"wider than {width} px: {', '.join(too_wide)}"
