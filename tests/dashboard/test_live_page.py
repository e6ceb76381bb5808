"""The run page's live refresh: a cheap change stamp (``changes/``) and the partials it re-renders
(``live/``)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from dashboard.models import Checkpoint, Job, Run
from tests.dashboard.conftest import add_checkpoint_rows
from tests.dashboard.test_pages import RUN_PAGE_QUERIES

pytestmark = pytest.mark.django_db

# Session, user, two permission lookups, run; then the newest recorded_at and the recent jobs.
CHANGES_QUERIES = 7


def stamp_of(client, run: Run, since: str = ""):
    return client.get(reverse("run-changes", args=[run.name]), {"since": since} if since else {})


def test_changes_answers_204_until_something_changes(client, viewer, demo_rows):
    client.force_login(viewer)
    first = stamp_of(client, demo_rows)
    assert first.status_code == 200 and first["Cache-Control"] == "no-store"
    stamp = first.json()["stamp"]
    assert stamp_of(client, demo_rows, stamp).status_code == 204

    add_checkpoint_rows(demo_rows, 1, start_step=50)  # recorded outside a scan (as a save job does)
    moved = stamp_of(client, demo_rows, stamp)
    assert moved.status_code == 200 and moved.json()["stamp"] != stamp


@pytest.mark.parametrize("change", ["scan", "job", "job_ends"])
def test_stamp_moves_on_scans_and_jobs(client, viewer, demo_rows, change):
    client.force_login(viewer)
    job = Job.objects.create(kind=Job.SCAN, run=demo_rows) if change == "job_ends" else None
    stamp = stamp_of(client, demo_rows).json()["stamp"]
    if change == "scan":
        Run.objects.filter(pk=demo_rows.pk).update(last_scanned_at=timezone.now() + dt.timedelta(seconds=1))
    elif change == "job":
        Job.objects.create(kind=Job.SCAN, run=demo_rows)
    else:
        Job.objects.filter(pk=job.pk).update(status=Job.FINISHED)
    assert stamp_of(client, demo_rows, stamp).status_code == 200


def test_changes_costs_two_queries_besides_the_run_whatever_the_size(
    client, viewer, demo_rows, django_assert_num_queries
):
    client.force_login(viewer)
    stamp_of(client, demo_rows)
    with django_assert_num_queries(CHANGES_QUERIES):
        stamp_of(client, demo_rows)
    add_checkpoint_rows(demo_rows, 2000, start_step=100)
    with django_assert_num_queries(CHANGES_QUERIES):
        stamp_of(client, demo_rows)


def test_page_and_live_partial_carry_the_stamp_the_endpoint_reports(client, viewer, demo_rows):
    client.force_login(viewer)
    stamp = stamp_of(client, demo_rows).json()["stamp"]
    page = client.get(reverse("run", args=[demo_rows.name])).content.decode()
    assert f'data-stamp="{stamp}"' in page
    live = client.get(reverse("run-live", args=[demo_rows.name])).content.decode()
    assert f'data-stamp="{stamp}"' in live
    assert "model.ckpt-3" in live and 'id="run-history"' in live and 'id="run-summary"' in live
    assert "<html" not in live


def test_live_partial_keeps_the_page_and_sort_and_links_back_to_the_page(client, maintainer, demo_rows):
    add_checkpoint_rows(demo_rows, 120, start_step=10)
    client.force_login(maintainer)
    live = client.get(reverse("run-live", args=[demo_rows.name]), {"last": 1, "sort": "-step"}).content.decode()
    assert "model.ckpt-1<" in live and "model.ckpt-129" not in live
    # A pin submitted from refreshed rows comes back to the page, not to the partial.
    assert f'name="next" value="/runs/{demo_rows.name}/?last=1&amp;sort=-step"' in live


def test_run_page_keeps_its_query_budget(client, viewer, demo_rows, django_assert_num_queries):
    client.force_login(viewer)
    with django_assert_num_queries(RUN_PAGE_QUERIES):
        client.get(reverse("run", args=[demo_rows.name]))
    with django_assert_num_queries(RUN_PAGE_QUERIES):
        client.get(reverse("run-live", args=[demo_rows.name]))


def test_live_endpoints_need_login_and_refuse_posts(client, viewer, demo_rows):
    for name in ("run-changes", "run-live"):
        assert client.get(reverse(name, args=[demo_rows.name])).status_code == 302
    client.force_login(viewer)
    assert client.post(reverse("run-changes", args=[demo_rows.name])).status_code == 405
    assert client.get(reverse("run-changes", args=["no-such-run"])).status_code == 404


def test_rows_that_went_gone_are_on_the_chart_as_gone(client, viewer, demo_rows):
    Checkpoint.objects.filter(run=demo_rows, step=1).update(status=Checkpoint.ROTATED)
    client.force_login(viewer)
    data = client.get(reverse("run-chart", args=[demo_rows.name])).json()
    assert data["gone"] == [True, False, False] and data["size_bytes"][0] is None
