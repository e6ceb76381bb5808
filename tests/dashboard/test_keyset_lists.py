"""Keyset pagination of the audit log, an endpoint's webhook deliveries, the prune plan, and the
jobs list filtered by run.

Walking the Next links lists every row once in order, also when rows are added meanwhile; the
queries per page do not grow with the rows; the total stops counting at its cap; an old
``?page=N`` link gives the first page; PostgreSQL reads each page from an index, without sorting.
The prune plan is a cached list: its pages are read from the cache at the cursor's position, and
a cursor of an older plan finds its place by its key.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard import webhooks
from dashboard.models import AuditEvent, Run, WebhookDelivery
from dashboard.views import retention as retention_views
from dashboard.views import webhooks as webhook_views
from tests.dashboard.test_prune_plan import fake_run

pytestmark = pytest.mark.django_db

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PUBLIC = "https://93.184.215.14/hooks/checkpoints"


@pytest.fixture(autouse=True)
def _guard_on(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    webhooks.forget_subscriptions()


class Log:
    """One of the lists: where it lives, how rows are added, what order it shows them in."""

    def __init__(self, name: str, checkpoint_root) -> None:
        self.name = name
        self.run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"))
        self.other = Run.objects.create(name="other", directory=str(checkpoint_root / "other"))
        if name == "audit":
            self.url, self.query = reverse("audit"), {}
        elif name == "audit-by-run":
            self.url, self.query = reverse("audit"), {"run": "r"}
        else:
            self.endpoint, _ = webhooks.create_endpoint(url=PUBLIC, events=[webhooks.JOB_FAILED])
            self.url = reverse("webhook", args=[self.endpoint.pk])
            self.query = {"state": WebhookDelivery.FAILED} if name == "deliveries-by-state" else {}
        self.added = 0

    def grow(self, n: int, *, newer: bool = False) -> None:
        """``n`` rows the list shows, and as many it filters out where it filters (``newer``: after
        every row so far)."""
        start, self.added = self.added, self.added + n
        base = BASE + dt.timedelta(days=1) if newer else BASE
        if self.name.startswith("audit"):
            # Four distinct times: most rows tie on time and the id breaks the tie.
            AuditEvent.objects.bulk_create(
                AuditEvent(action=["pin", "prune"][i % 2], summary=f"event {i}", run=self.run,
                           at=base + dt.timedelta(minutes=i % 4))
                for i in range(start, start + n))
            if self.name == "audit-by-run":
                AuditEvent.objects.bulk_create(AuditEvent(action="pin", summary="elsewhere", run=self.other, at=base)
                                               for _ in range(n))
        else:
            states = [WebhookDelivery.FAILED]
            if self.name == "deliveries-by-state":
                states.append(WebhookDelivery.DELIVERED)
            WebhookDelivery.objects.bulk_create(
                WebhookDelivery(endpoint=self.endpoint, event=webhooks.JOB_FAILED, event_id=f"evt_{state}_{i}",
                                payload={"n": i}, state=state, created_at=base)
                for i in range(start, start + n) for state in states)

    def expected(self) -> list[int]:
        if self.name.startswith("audit"):
            rows = AuditEvent.objects.filter(run=self.run).values_list("at", "id")
            return [pk for _, pk in sorted(rows, reverse=True)]
        return list(WebhookDelivery.objects.filter(endpoint=self.endpoint, state=WebhookDelivery.FAILED)
                    .order_by("-id").values_list("id", flat=True))

    def ids(self, html: str) -> list[int]:
        if self.name.startswith("audit"):
            return [int(n) for n in re.findall(r"<td>event (\d+)</td>", html)]
        return [int(pk) for pk in re.findall(r'id="delivery-(\d+)"', html)]

    def get(self, client, query: str | None = None):
        if query is None:
            return client.get(self.url, self.query)
        return client.get(self.url + "?" + query.replace("&amp;", "&"))


def summaries_to_ids(log: Log, shown: list[int]) -> list[int]:
    # The audit rows show their summary ("event 7"), not their id.
    if not log.name.startswith("audit"):
        return shown
    by_summary = dict(AuditEvent.objects.filter(run=log.run).values_list("summary", "id"))
    return [by_summary[f"event {n}"] for n in shown]


LOGS = ["audit", "audit-by-run", "deliveries", "deliveries-by-state"]


@pytest.fixture
def log(request, checkpoint_root, client, maintainer) -> Log:
    client.force_login(maintainer)
    return Log(request.param, checkpoint_root)


def next_link(html: str) -> str | None:
    found = re.search(r'href="\?([^"]*)" rel="next"', html)
    return found.group(1) if found else None


@pytest.mark.parametrize("log", LOGS, indirect=True)
def test_a_log_pages_by_cursor_with_constant_queries(client, log, django_assert_max_num_queries):
    log.grow(5)
    with CaptureQueriesContext(connection) as small:
        assert log.get(client).status_code == 200
    log.grow(400)
    with django_assert_max_num_queries(len(small.captured_queries)):
        html = log.get(client).content.decode()
    assert "showing" in html and "of 405</span>" in html
    seen = []
    for _ in range(50):
        seen.extend(log.ids(html))
        link = next_link(html)
        if link is None:
            break
        with django_assert_max_num_queries(len(small.captured_queries)):
            html = log.get(client, link).content.decode()
        assert "« First" in html and "‹ Previous" in html
    assert summaries_to_ids(log, seen) == log.expected()
    last = log.get(client, "last=1&" + "&".join(f"{k}={v}" for k, v in log.query.items())).content.decode()
    assert next_link(last) is None and "‹ Previous" in last


@pytest.mark.parametrize("log", LOGS, indirect=True)
def test_rows_added_meanwhile_neither_repeat_nor_vanish_from_the_next_page(client, log):
    log.grow(120)
    before = log.expected()
    first = log.get(client).content.decode()
    log.grow(30, newer=True)  # they come before the first page, not into the next
    second = log.get(client, next_link(first)).content.decode()
    shown = summaries_to_ids(log, log.ids(first) + log.ids(second))
    assert shown == before[: len(shown)] and len(set(shown)) == len(shown)


@pytest.mark.parametrize("log", ["audit", "deliveries"], indirect=True)
def test_the_total_stops_at_its_cap_and_an_old_page_number_gives_the_first_page(client, log, monkeypatch):
    monkeypatch.setattr(retention_views, "AUDIT_COUNT_CAP", 60)
    monkeypatch.setattr(webhook_views, "DELIVERIES_COUNT_CAP", 60)
    log.grow(61)
    html = log.get(client).content.decode()
    assert "of more than 60</span>" in html
    old = client.get(log.url, {"page": 3})
    assert old.status_code == 200
    assert log.ids(old.content.decode()) == log.ids(html)
    assert "page=" not in next_link(html)
    monkeypatch.setattr(retention_views, "AUDIT_COUNT_CAP", 61)
    monkeypatch.setattr(webhook_views, "DELIVERIES_COUNT_CAP", 61)
    assert "of 61</span>" in log.get(client).content.decode()


def test_the_audit_actions_are_the_distinct_ones_recorded(checkpoint_root):
    assert AuditEvent.actions() == []
    for action in ["unpin", "prune", "pin", "prune", "alias", "pin"]:
        AuditEvent.record(action, "x")
    assert AuditEvent.actions() == ["alias", "pin", "prune", "unpin"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan checked is PostgreSQL's")
@pytest.mark.parametrize("log", LOGS, indirect=True)
def test_postgresql_reads_a_later_page_from_an_index_without_sorting(client, log):
    log.grow(200)
    link = next_link(log.get(client).content.decode())
    table = AuditEvent._meta.db_table if log.name.startswith("audit") else WebhookDelivery._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        log.get(client, link)
    [sql] = [q["sql"] for q in queries.captured_queries
             if f'FROM "{table}"' in q["sql"] and "ORDER BY" in q["sql"] and "COUNT(" not in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{table}"')  # the planner's estimates, as a deployment has them
        cursor.execute("SET LOCAL enable_seqscan = off")  # a small test table would be read whole
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # Which index depends on the planner's estimates (with one endpoint, its deliveries are the
    # primary key's); none sorts, and the cursor bounds the range read.
    assert "Index Scan" in plan and "Sort" not in plan, plan
    assert re.search(r"Index Cond: .*ROW\(|Index Cond: .*id < ", plan), plan


# --- the prune plan --------------------------------------------------------------------------------


def plan_prefixes(html: str) -> list[str]:
    return re.findall(r"<code>(model\.ckpt-\d+)</code></a>", html.split('class="striped prune-plan"', 1)[1])


def walk_plan(client, url: str, first: dict, *, backward: bool = False) -> list[str]:
    html = client.get(url, first).content.decode()
    pages = []
    for _ in range(20):
        pages.append(plan_prefixes(html))
        found = re.search(r'href="\?([^"]*)" rel="%s"' % ("prev" if backward else "next"), html)
        if not found:
            break
        html = client.get(url + "?" + found.group(1).replace("&amp;", "&")).content.decode()
    ordered = [p for rows in (reversed(pages) if backward else pages) for p in rows]
    return list(dict.fromkeys(ordered)) if backward else ordered


@pytest.fixture
def long_plan(client, viewer, checkpoint_root):
    client.force_login(viewer)
    run = fake_run(checkpoint_root / "r", "r", list(range(1, 251)), meta_first=False, max_to_keep=5)
    return run, reverse("run-prune", args=[run.name])


@pytest.mark.parametrize("show", ["all", "delete", "keep"])
def test_the_plan_pages_forward_and_back_through_every_decision(client, long_plan, show):
    _, url = long_plan
    want = {"all": range(1, 251), "delete": range(1, 246), "keep": range(246, 251)}[show]
    want = [f"model.ckpt-{s}" for s in want]
    assert walk_plan(client, url, {"show": show}) == want
    assert walk_plan(client, url, {"show": show, "last": 1}, backward=True) == want
    html = client.get(url, {"show": show}).content.decode()
    if show == "delete":
        assert "showing 100 of 245" in html


def test_a_deep_plan_page_reads_as_much_as_the_first(client, long_plan, django_assert_max_num_queries):
    _, url = long_plan
    client.get(url)  # plans and caches
    with CaptureQueriesContext(connection) as first:
        html = client.get(url, {"show": "delete"}).content.decode()
    for _ in range(2):
        found = re.search(r'href="\?([^"]*)" rel="next"', html)
        with django_assert_max_num_queries(len(first.captured_queries)):
            html = client.get(url + "?" + found.group(1).replace("&amp;", "&")).content.decode()
    assert plan_prefixes(html)[0] == "model.ckpt-201"


def test_a_plan_cursor_finds_its_place_after_the_run_changed(client, long_plan):
    run, url = long_plan
    first = client.get(url, {"show": "delete"}).content.decode()
    assert plan_prefixes(first)[-1] == "model.ckpt-100"
    # Recorded meanwhile: older than everything (step 0) and newest (step 251); a new plan, whose
    # positions all moved by one.
    for step, at in ((0, BASE - dt.timedelta(days=1)), (251, BASE + dt.timedelta(days=30))):
        run.checkpoints.create(prefix=f"model.ckpt-{step}", step=step, saved_at=at, size_bytes=1,
                               files=[{"name": f"model.ckpt-{step}.index", "size": 1}])
    found = re.search(r'href="\?([^"]*)" rel="next"', first)
    for _ in ("planned now", "read from the cache"):
        second = plan_prefixes(client.get(url + "?" + found.group(1).replace("&amp;", "&")).content.decode())
        assert second[:2] == ["model.ckpt-101", "model.ckpt-102"]


@pytest.mark.parametrize("query", [{"page": 3}, {"after": "garbage"}, {"before": "%%%"},
                                   {"after": "WyJwbGFuIiwieCIsImRlbGV0ZSIsLTEsWzEsMiwiYSJdXQ"}])
def test_an_old_page_number_or_a_forged_plan_cursor_gives_the_first_page(client, long_plan, query):
    _, url = long_plan
    response = client.get(url, {"show": "delete", **query})
    assert response.status_code == 200
    assert plan_prefixes(response.content.decode())[:1] == ["model.ckpt-1"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan checked is PostgreSQL's")
def test_postgresql_reads_a_runs_jobs_from_its_index_without_sorting(client, viewer, checkpoint_root):
    from dashboard.models import Job

    run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"))
    other = Run.objects.create(name="other", directory=str(checkpoint_root / "other"))
    Job.objects.bulk_create(Job(kind=Job.SCAN, run=[run, other][i % 2], created_at=BASE + dt.timedelta(seconds=i))
                            for i in range(400))
    client.force_login(viewer)
    html = client.get(reverse("jobs"), {"run": "r"}).content.decode()
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse("jobs") + "?" + next_link(html).replace("&amp;", "&"))
    [sql] = [q["sql"] for q in queries.captured_queries
             if f'FROM "{Job._meta.db_table}"' in q["sql"] and "ORDER BY" in q["sql"] and "COUNT(" not in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{Job._meta.db_table}"')
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "job_run_created_id" in plan and "Sort" not in plan, plan
