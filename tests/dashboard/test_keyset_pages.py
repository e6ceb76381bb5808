"""Keyset pagination of the history, runs, jobs and exports lists: every sort walked forward and
backward over ties and step-less rows equals a plain sorted list; bad cursors give a page, never
an error; queries per page do not grow with the rows."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import pytest
from django.http import QueryDict
from django.urls import reverse

from dashboard import summaries
from dashboard.models import Checkpoint, Export, Job, MetricValue, Run
from dashboard.views import runs as run_views
from dashboard.views.paging import paginate
from tests.dashboard.conftest import add_checkpoint_rows

pytestmark = pytest.mark.django_db

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def tied(checkpoint_root) -> Run:
    """61 rows where nearly everything ties: four distinct times, three sizes, three loss values,
    some rows without a step, some without a loss, one step recorded twice (two prefixes)."""
    run = Run.objects.create(name="tied", directory=str(checkpoint_root / "tied"))
    rows = []
    for i in range(61):
        step = None if i % 10 == 3 else (i // 2) * 10  # pairs of rows share a step
        metrics = {} if i % 7 == 0 else {"loss": [0.5, 0.25, 1.0][i % 3], "acc": i}
        rows.append(Checkpoint(
            run=run, prefix=f"p-{i:03d}", step=step, saved_at=BASE + dt.timedelta(minutes=i % 4),
            size_bytes=100 * (i % 3), metrics=metrics,
            status=Checkpoint.PRUNED if i % 5 == 0 else Checkpoint.PRESENT,
        ))
    Checkpoint.objects.bulk_create(rows)
    summaries.rebuild([run])
    return run


def expected(run: Run, sort: str) -> list[int]:
    rows = list(run.checkpoints.values("id", "step", "saved_at", "size_bytes"))
    down = sort.startswith("-")
    key = sort.lstrip("-")
    if key == "step":
        stepped = sorted((r for r in rows if r["step"] is not None), key=lambda r: (r["step"], r["saved_at"], r["id"]),
                         reverse=down)
        stepless = sorted((r for r in rows if r["step"] is None), key=lambda r: (r["saved_at"], r["id"]), reverse=down)
        return [r["id"] for r in stepped + stepless]  # without a step: last, either way
    if key.startswith("metric:"):
        values = MetricValue.objects.filter(run=run, name=key.removeprefix("metric:")).values_list("value", "checkpoint_id")
        return [pk for _, pk in sorted(values, reverse=down)]
    column = {"saved_at": "saved_at", "size": "size_bytes"}[key]
    return [r["id"] for r in sorted(rows, key=lambda r: (r[column], r["id"]), reverse=down)]


def walk(run: Run, sort: str, size: int, *, backward: bool = False) -> list[int]:
    """Every row, page by page through the cursors the pages hand out (from the last page back when
    ``backward``), as the views read them. Walking back ends on a full first page, which may
    repeat rows of the page after it: those repeats are dropped."""
    query = QueryDict(mutable=True)
    query["sort"] = sort
    if backward:
        query["last"] = "1"
    pages = []
    for _ in range(200):
        if sort.lstrip("-").startswith("metric:"):
            page = run_views._history_by_metric(run, sort, sort.lstrip("-").removeprefix("metric:"),
                                                type("R", (), {"GET": query})())
        else:
            history = run.checkpoints.all()
            page = paginate(history, run_views.HISTORY_SORTS[sort], query, size)
        pages.append([c.pk for c in page])
        cursor = page.previous_cursor if backward else page.next_cursor
        if cursor is None:
            break
        query = QueryDict(mutable=True)
        query["sort"] = sort
        query["before" if backward else "after"] = cursor
    ordered = [pk for rows in (reversed(pages) if backward else pages) for pk in rows]
    return list(dict.fromkeys(ordered)) if backward else ordered


@pytest.mark.parametrize("sort", [*run_views.HISTORY_SORTS, "metric:loss", "-metric:loss"])
def test_every_sort_pages_exactly_like_a_sorted_list_over_ties(tied, sort, monkeypatch):
    monkeypatch.setattr(run_views, "HISTORY_PAGE_SIZE", 7)  # the metric sort reads the module's size
    want = expected(tied, sort)
    assert walk(tied, sort, 7) == want
    assert walk(tied, sort, 7, backward=True) == want
    assert walk(tied, sort, 200) == want  # one page


def test_history_pages_through_links_first_previous_next_last(client, viewer, tied):
    client.force_login(viewer)
    url = reverse("run", args=["tied"])
    seen, html = [], client.get(url).content.decode()
    first = html
    while True:
        seen.extend(dict.fromkeys(int(pk) for pk in re.findall(r'/runs/tied/checkpoints/(\d+)/"', html)))
        found = re.search(r'href="\?([^"]*)" rel="next"', html)
        if not found:
            break
        html = client.get(url + "?" + found.group(1).replace("&amp;", "&")).content.decode()
        assert "« First" in html and "‹ Previous" in html
    assert seen == expected(tied, "-step")
    assert "61 checkpoints" in first and "Next ›" in first and "‹ Previous" not in first
    last = client.get(url, {"last": 1}).content.decode()
    assert "Next ›" not in last and "‹ Previous" in last
    assert "showing 50 of 61" in last  # the last full page: the 50 rows that sort last


def test_metric_sort_lists_the_rows_with_a_value_and_links_each_metric(client, viewer, tied):
    client.force_login(viewer)
    url = reverse("run", args=["tied"])
    html = client.get(url, {"sort": "metric:loss"}).content.decode()
    assert "only those with a value for it" in html
    assert 'href="?sort=-metric%3Aloss"' in html  # the header toggles the direction
    html = client.get(url, {"sort": "metric:no such thing"}).content.decode()
    assert "No checkpoint of this run has a value for no such thing" in html


def test_every_history_page_keeps_the_query_budget_whatever_the_size(
    client, viewer, demo_rows, django_assert_num_queries
):
    from tests.dashboard.test_pages import RUN_PAGE_QUERIES

    client.force_login(viewer)
    url = reverse("run", args=["rows"])
    add_checkpoint_rows(demo_rows, 3000, start_step=10)
    for sort in [*run_views.HISTORY_SORTS, "metric:loss", "-metric:loss"]:
        cursor = client.get(url, {"sort": sort}).context["page"].next_cursor
        back = client.get(url, {"sort": sort, "after": cursor}).context["page"].previous_cursor
        assert cursor and back
        # First, next, previous (as the links of page 2 go back), last.
        for query in ({"sort": sort}, {"sort": sort, "after": cursor}, {"sort": sort, "before": back},
                      {"sort": sort, "last": 1}):
            with django_assert_num_queries(RUN_PAGE_QUERIES):
                assert client.get(url, query).status_code == 200


def cursor_of(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


BAD_CURSORS = [
    "garbage", "%%%", "A" * 5000, cursor_of("not a list"), cursor_of(["-step", 0, [1, 2]]),
    cursor_of(["-step", 0, ["x", "2026-01-01T00:00:00+00:00", 1]]), cursor_of(["-step", 7, [1, 2, 3]]),
    cursor_of(["-step", 0, [10**30, "2026-01-01T00:00:00+00:00", 1]]),
    cursor_of(["-step", 0, [1, "2026-01-01T00:00:00", 1]]),  # a time without its zone
    cursor_of(["-step", 0, [1, "not a time", 1]]), cursor_of(["size", 0, [True, 1]]),
    cursor_of(["-metric:loss", 0, [float("nan"), 1]]).replace("NaN", "nan"),
    cursor_of(["-saved_at", 0, ["2026-01-01T00:00:00+00:00", 1]]),  # another ordering's
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
@pytest.mark.parametrize("direction", ["after", "before"])
@pytest.mark.parametrize("sort", ["-step", "size", "-metric:loss"])
def test_a_forged_cursor_gives_a_page_not_an_error(client, viewer, tied, cursor, direction, sort):
    client.force_login(viewer)
    response = client.get(reverse("run", args=["tied"]), {"sort": sort, direction: cursor})
    assert response.status_code == 200
    assert "tied" in response.content.decode()


def test_a_stale_cursor_gives_the_nearest_page(client, viewer, tied):
    client.force_login(viewer)
    url = reverse("run", args=["tied"])
    past_the_end = cursor_of(["-step", 1, ["2020-01-01T00:00:00+00:00", 0]])  # nothing is after it
    html = client.get(url, {"after": past_the_end}).content.decode()
    assert "Next ›" not in html and "‹ Previous" in html  # the last page
    before_the_start = cursor_of(["-step", 0, [10**9, "2030-01-01T00:00:00+00:00", 10**9]])
    html = client.get(url, {"before": before_the_start}).content.decode()
    assert "‹ Previous" not in html and "Next ›" in html  # the first page


@pytest.mark.parametrize("name", ["runs", "jobs", "exports"])
def test_runs_jobs_and_exports_lists_page_by_cursor_with_constant_queries(
    client, viewer, checkpoint_root, name, django_assert_max_num_queries
):
    run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"))
    add_checkpoint_rows(run, 3)

    def grow(n: int) -> None:
        if name == "runs":
            Run.objects.bulk_create(Run(name=f"r-{len_}-{i}", directory=str(checkpoint_root / f"d{len_}-{i}"))
                                    for len_ in [Run.objects.count()] for i in range(n))
        elif name == "jobs":
            # Equal creation times: the id breaks the tie.
            Job.objects.bulk_create(Job(kind=Job.SCAN, run=run, created_at=BASE) for _ in range(n))
        else:
            pks = list(run.checkpoints.values_list("pk", flat=True))
            Export.objects.bulk_create(
                Export(checkpoint_id=pks[i % len(pks)], path=str(checkpoint_root / f"{Export.objects.count()}-{i}.pb"),
                       sha256="0" * 64, created_at=BASE)
                for i in range(n))

    url = {"runs": "/", "jobs": reverse("jobs"), "exports": reverse("exports")}[name]
    client.force_login(viewer)
    grow(5)
    client.get(url)
    grow(1)  # the exports list caches its run filter per export-table state: measure a miss
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    grow(400)
    with django_assert_max_num_queries(len(small.captured_queries)):
        html = client.get(url).content.decode()
    # Walk to the end by the Next links: every row once.
    pattern = {"runs": r'href="/runs/([^/"]+)/"', "jobs": r'href="/jobs/(\d+)/"', "exports": r'href="/exports/(\d+)/"'}
    seen = []
    for _ in range(50):
        seen.extend(dict.fromkeys(re.findall(pattern[name], html)))
        found = re.search(r'href="\?([^"]*)" rel="next"', html)
        if not found:
            break
        with django_assert_max_num_queries(len(small.captured_queries)):
            html = client.get(url + "?" + found.group(1).replace("&amp;", "&")).content.decode()
    total = {"runs": Run.objects.count(), "jobs": Job.objects.count(), "exports": Export.objects.count()}[name]
    assert len(seen) == len(set(seen)) == total


def test_export_list_run_filter_follows_exports_added_and_deleted(client, viewer, checkpoint_root):
    """The run filter's choices are cached; adding, deleting or replacing an export shows at once."""
    first, second = (Run.objects.create(name=n, directory=str(checkpoint_root / n)) for n in ("first", "second"))
    for run in (first, second):
        add_checkpoint_rows(run, 2)
    client.force_login(viewer)

    def choices() -> list[str]:
        html = client.get(reverse("exports")).content.decode()
        return re.findall(r'<option value="([^"]+)"', html.split('name="run"', 1)[1].split("</select>", 1)[0])

    Export.objects.create(checkpoint=first.checkpoints.first(), path=str(checkpoint_root / "a.pb"), sha256="0" * 64)
    assert choices() == ["first"]
    added = Export.objects.create(checkpoint=second.checkpoints.first(), path=str(checkpoint_root / "b.pb"),
                                  sha256="0" * 64)
    assert choices() == ["first", "second"]
    added.delete()
    assert choices() == ["first"]
    # One export replaced by another of the other run: as many rows as before, a newer id.
    second.checkpoints.first().exports.create(path=str(checkpoint_root / "c.pb"), sha256="0" * 64)
    first.checkpoints.first().exports.all().delete()
    assert choices() == ["second"]
