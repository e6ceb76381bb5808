"""Problem details for every kind of error, cursor pages, idempotency keys, throttling and the
queue outage, through Django's test client against the real database and Redis."""

from __future__ import annotations

import json
import os
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dashboard.models import AuditEvent, Checkpoint, Export, IdempotencyKey, Job, Run
from tests.dashboard.conftest import add_checkpoint_rows

from .conftest import TokenClient, token_for

pytestmark = pytest.mark.django_db


def assert_problem(response, status: int, *, kind: str | None = None) -> dict:
    assert response.status_code == status, response.content[:400]
    assert response["Content-Type"] == "application/problem+json"
    problem = json.loads(response.content)
    assert problem["status"] == status
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert problem["type"] == (f"urn:checkpoint-dashboard:problem:{kind}" if kind else problem["type"])
    assert "Traceback" not in response.content.decode() and "<html" not in response.content.decode().lower()
    return problem


@pytest.fixture
def run(checkpoint_root) -> Run:
    (checkpoint_root / "lists").mkdir()
    run = Run.objects.create(name="lists", directory=str(checkpoint_root / "lists"))
    add_checkpoint_rows(run, 12)
    return run


@pytest.fixture
def viewer_client(api_users) -> TokenClient:
    return TokenClient(token_for(api_users["viewer"], "viewer"))


@pytest.fixture
def operator_client(api_users) -> TokenClient:
    return TokenClient(token_for(api_users["operator"], "operator"))


@pytest.fixture
def maintainer_client(api_users) -> TokenClient:
    return TokenClient(token_for(api_users["maintainer"], "maintainer"))


# --- problem details --------------------------------------------------------------------------


def test_unknown_routes_and_methods_answer_problem_details_not_html(viewer_client):
    assert_problem(viewer_client.get("/api/v1/no-such-thing"), 404, kind="no-such-endpoint")
    assert_problem(Client().get("/api/v1/runs/x/y/z"), 404, kind="no-such-endpoint")  # no login redirect
    problem = assert_problem(viewer_client.delete("/api/v1/runs"), 405)
    assert "method" in problem["detail"].lower()
    assert_problem(viewer_client.get("/api/v1/runs?x=%00"), 400)  # the NUL-byte check, in front of the API


def test_bad_input_names_the_field(viewer_client, operator_client, run):
    problem = assert_problem(viewer_client.get("/api/v1/runs/lists/checkpoints?limit=501"), 400, kind="validation")
    assert problem["errors"][0]["field"] == "limit" and "limit" in problem["detail"]
    problem = assert_problem(viewer_client.get("/api/v1/runs/lists/checkpoints?min_step=ten"), 400)
    assert problem["errors"][0]["field"] == "min_step"
    problem = assert_problem(operator_client.post_json("/api/v1/runs", {"name": "x"}), 400, kind="validation")
    assert problem["errors"][0]["field"] == "directory"
    problem = assert_problem(operator_client.post_json("/api/v1/runs", {"directory": "/etc", "name": "etc"}), 400)
    assert problem["errors"][0]["field"] == "directory" and "root" in problem["detail"]
    problem = assert_problem(viewer_client.get("/api/v1/runs/lists/checkpoints?cursor=bm9wZQ"), 400,
                             kind="invalid-cursor")
    assert problem["field"] == "cursor"
    problem = assert_problem(operator_client.post("/api/v1/runs", "{not json", content_type="application/json"), 400)
    assert not Run.objects.exclude(pk=run.pk).exists()


def test_unknown_objects_are_404_problems(viewer_client):
    for path in ("/api/v1/runs/nope", "/api/v1/checkpoints/999999", "/api/v1/jobs/999999", "/api/v1/exports/999999",
                 "/api/v1/exports/999999/download", "/api/v1/runs/nope/checkpoints"):
        assert_problem(viewer_client.get(path), 404, kind="not-found")


def test_a_browser_session_works_and_needs_csrf_for_changes(api_users, run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(api_users["maintainer"])
    assert client.get("/api/v1/runs/lists").json()["name"] == "lists"
    checkpoint = run.checkpoints.first()
    problem = assert_problem(client.post(f"/api/v1/checkpoints/{checkpoint.pk}/pin", "{}",
                                         content_type="application/json"), 403)
    assert "CSRF" in problem["detail"]
    checkpoint.refresh_from_db()
    assert not checkpoint.pinned
    client.get("/tokens/")  # a page with a form sets the CSRF cookie the pages' scripts send
    csrf = client.cookies["csrftoken"].value
    response = client.post(f"/api/v1/checkpoints/{checkpoint.pk}/pin", json.dumps({"reason": "by session"}),
                           content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200 and response.json()["pinned"] is True


# --- cursor pagination --------------------------------------------------------------------------


def _walk(client, url: str, limit: int, **query: str) -> list[dict]:
    items, cursor, pages = [], query.pop("cursor", None), 0
    while True:
        page = client.get(url, {**query, "limit": limit, **({"cursor": cursor} if cursor else {})}).json()
        assert set(page) == {"items", "next"} and len(page["items"]) <= limit
        items += page["items"]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            return items
        assert pages < 100


def test_cursor_pages_walk_every_checkpoint_once_in_step_order(viewer_client, run):
    # Checkpoints without a step sort last, in either direction.
    Checkpoint.objects.create(run=run, prefix="unnumbered-a", saved_at=run.created_at)
    Checkpoint.objects.create(run=run, prefix="unnumbered-b", saved_at=run.created_at)
    newest_first = _walk(viewer_client, "/api/v1/runs/lists/checkpoints", 5)
    assert [c["step"] for c in newest_first] == list(range(12, 0, -1)) + [None, None]
    oldest_first = _walk(viewer_client, "/api/v1/runs/lists/checkpoints", 4, ordering="step")
    assert [c["step"] for c in oldest_first] == list(range(1, 13)) + [None, None]
    assert len({c["id"] for c in oldest_first}) == 14
    assert set(newest_first[0]) == {"id", "prefix", "step", "status", "is_latest", "pinned", "size_bytes",
                                    "saved_at", "metrics", "metric_steps"}


def test_a_cursor_keeps_its_place_when_rows_are_added(viewer_client, run):
    first = viewer_client.get("/api/v1/runs/lists/checkpoints", {"ordering": "step", "limit": 5}).json()
    add_checkpoint_rows(run, 2, start_step=100)  # recorded meanwhile, after the cursor
    Checkpoint.objects.filter(run=run, step=2).delete()  # and one already seen goes
    rest = _walk(viewer_client, "/api/v1/runs/lists/checkpoints", 5, ordering="step", cursor=first["next"])
    assert [c["step"] for c in first["items"]] == [1, 2, 3, 4, 5]
    assert [c["step"] for c in rest] == [6, 7, 8, 9, 10, 11, 12, 100, 101]


@pytest.mark.parametrize("ordering", ["-step", "step"])
def test_cursor_pages_keep_ties_and_stepless_rows_with_queries_constant_in_the_rows(viewer_client, run, ordering):
    # Steps recorded twice (two prefixes) and rows without a step: the id orders each tie.
    Checkpoint.objects.bulk_create(Checkpoint(run=run, prefix=f"again-{i}", step=[3, 7][i % 2],
                                              saved_at=run.created_at) for i in range(6))
    Checkpoint.objects.bulk_create(Checkpoint(run=run, prefix=f"unnumbered-{i}", saved_at=run.created_at)
                                   for i in range(5))
    rows = list(run.checkpoints.values_list("step", "id"))
    stepped = sorted((r for r in rows if r[0] is not None), key=lambda r: (-r[0] if ordering == "-step" else r[0], r[1]))
    want = [pk for _, pk in stepped] + sorted(pk for step, pk in rows if step is None)
    for limit in (1, 2, 3, 5, 50):
        assert [c["id"] for c in _walk(viewer_client, "/api/v1/runs/lists/checkpoints", limit,
                                       ordering=ordering)] == want

    def queries_per_page() -> list[int]:
        counts, cursor = [], None
        for _ in range(4):
            with CaptureQueriesContext(connection) as captured:
                page = viewer_client.get("/api/v1/runs/lists/checkpoints",
                                         {"ordering": ordering, "limit": 4, **({"cursor": cursor} if cursor else {})})
            counts.append(len(captured.captured_queries))
            cursor = page.json()["next"]
        return counts

    small = queries_per_page()
    add_checkpoint_rows(run, 2000, start_step=1000)
    assert queries_per_page() == small


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan checked is PostgreSQL's")
def test_postgresql_reads_a_cursor_page_of_checkpoints_as_index_ranges(viewer_client, run):
    add_checkpoint_rows(run, 300, start_step=100)
    # Oldest first: the rest of the cursor's step (a tie) is read before the steps after it.
    cursor = viewer_client.get("/api/v1/runs/lists/checkpoints", {"limit": 10, "ordering": "step"}).json()["next"]
    with CaptureQueriesContext(connection) as captured:
        viewer_client.get("/api/v1/runs/lists/checkpoints", {"limit": 10, "cursor": cursor, "ordering": "step"})
    table = Checkpoint._meta.db_table
    pages = [q["sql"] for q in captured.captured_queries if f'FROM "{table}"' in q["sql"] and "LIMIT" in q["sql"]]
    assert pages
    for sql in pages:
        assert " OR " not in sql, sql
        with connection.cursor() as db:
            db.execute(f'ANALYZE "{table}"')  # the planner's estimates, as a deployment has them
            db.execute("SET LOCAL enable_seqscan = off")  # a small test table would be read whole
            db.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in db.fetchall())
        # An index range. Only the rest of one step's tie is sorted (by id); elsewhere an incremental
        # sort orders each step's ties: nothing sorts the run's rows.
        assert "checkpoint_run_step_saved_id" in plan, plan
        assert not re.search(r"(^|->  )Sort ", plan, re.M) or re.search(r"Index Cond: .*\(step = \d+\)", plan), plan


def test_checkpoint_filters(viewer_client, run, maintainer_client):
    Checkpoint.objects.filter(run=run, step__in=[3, 9]).update(pinned=True)
    Checkpoint.objects.filter(run=run, step=4).update(status=Checkpoint.CORRUPT)
    get = lambda query: [c["step"] for c in viewer_client.get(f"/api/v1/runs/lists/checkpoints?{query}").json()["items"]]  # noqa: E731
    assert get("pinned=true") == [9, 3]
    assert get("status=corrupt") == [4]
    assert get("min_step=5&max_step=7&ordering=step") == [5, 6, 7]
    assert get("has_export=true") == []
    assert len(get("has_export=false")) == 12


# --- idempotency ------------------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_first_job_and_starts_nothing_new(operator_client, api_users, run):
    first = operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="scan-1")
    again = operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="scan-1")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert Job.objects.filter(kind=Job.SCAN, run=run).count() == 1
    # Another key, or another client with the same key, starts another job.
    other = operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="scan-2")
    someone_else = TokenClient(token_for(api_users["operator"], "operator", "second token"))
    theirs = someone_else.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="scan-1")
    ids = {first.json()["job"]["id"], other.json()["job"]["id"], theirs.json()["job"]["id"]}
    assert len(ids) == 3 and Job.objects.filter(kind=Job.SCAN, run=run).count() == 3
    # Without a key every request starts a job.
    operator_client.post_json("/api/v1/runs/lists/scan")
    assert Job.objects.filter(kind=Job.SCAN, run=run).count() == 4


def test_an_idempotency_key_reused_for_another_request_is_refused(operator_client, run, checkpoint_root):
    (checkpoint_root / "second").mkdir()
    Run.objects.create(name="second", directory=str(checkpoint_root / "second"))
    operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="k")
    assert_problem(operator_client.post_json("/api/v1/runs/second/scan", HTTP_IDEMPOTENCY_KEY="k"), 422,
                   kind="idempotency-key-reused")
    assert Job.objects.filter(run__name="second").count() == 0


def test_an_expired_idempotency_key_starts_a_new_job(operator_client, run):
    import datetime as dt

    operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="daily")
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at - dt.timedelta(hours=25))
    operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="daily")
    assert Job.objects.filter(kind=Job.SCAN, run=run).count() == 2
    assert IdempotencyKey.objects.count() == 1


def test_a_refused_request_does_not_use_up_its_idempotency_key(maintainer_client, run):
    refused = maintainer_client.post_json("/api/v1/runs/lists/prune", {"fingerprint": "old"},
                                          HTTP_IDEMPOTENCY_KEY="prune-1")
    assert_problem(refused, 409, kind="plan-changed")
    assert not IdempotencyKey.objects.exists()


# --- throttling and the queue outage ------------------------------------------------------------


def test_a_client_over_its_rate_gets_429_with_retry_after(settings, api_users, run):
    settings.API_THROTTLE_RATE = "3/hour"  # an hour: the window never turns mid-test
    fast = TokenClient(token_for(api_users["viewer"], "viewer", "fast"))
    calm = TokenClient(token_for(api_users["viewer"], "viewer", "calm"))
    statuses = [fast.get("/api/v1/runs").status_code for _ in range(3)]
    throttled = fast.get("/api/v1/runs")
    assert statuses == [200, 200, 200]
    assert_problem(throttled, 429, kind="throttled")
    assert 1 <= int(throttled["Retry-After"]) <= 3600
    assert calm.get("/api/v1/runs").status_code == 200  # per token


def test_queue_unavailable_is_503_and_starts_nothing(settings, operator_client, run):
    settings.RQ_QUEUES = {name: {**config, "URL": "unix:///nonexistent/redis.sock"}
                          for name, config in settings.RQ_QUEUES.items()}
    response = operator_client.post_json("/api/v1/runs/lists/scan", HTTP_IDEMPOTENCY_KEY="during-outage")
    problem = assert_problem(response, 503, kind="queue-unavailable")
    assert "nothing was started" in problem["detail"] and response["Retry-After"]
    # The row the queue could not take is canceled, so a later retry makes the only job that runs.
    assert list(Job.objects.filter(run=run).values_list("status", flat=True)) == [Job.CANCELED]
    assert not IdempotencyKey.objects.exists()
    assert operator_client.get("/api/v1/runs/lists").status_code == 200  # reads still work


# --- other behaviour --------------------------------------------------------------------------


def test_cancel_needs_the_permission_of_the_jobs_kind_and_409_once_ended(operator_client, run):
    scan = Job.objects.create(kind=Job.SCAN, run=run)
    prune = Job.objects.create(kind=Job.PRUNE, run=run)
    assert operator_client.post_json(f"/api/v1/jobs/{scan.pk}/cancel").json()["status"] == "canceled"
    assert_problem(operator_client.post_json(f"/api/v1/jobs/{prune.pk}/cancel"), 403, kind="forbidden")
    assert_problem(operator_client.post_json(f"/api/v1/jobs/{scan.pk}/cancel"), 409, kind="job-ended")
    prune.refresh_from_db()
    assert prune.status == Job.QUEUED


def test_job_shape(viewer_client, run):
    job = Job.objects.create(kind=Job.SCAN, run=run, progress=40, message="half way")
    body = viewer_client.get(f"/api/v1/jobs/{job.pk}").json()
    assert {"id", "kind", "status", "progress", "message", "result", "error"} <= set(body)
    assert (body["id"], body["kind"], body["status"], body["progress"], body["message"]) == (
        job.pk, "scan", "queued", 40, "half way")


def test_pin_and_unpin_are_audited_as_the_tokens_user(maintainer_client, api_users, run):
    checkpoint = run.checkpoints.get(step=5)
    assert maintainer_client.post_json(f"/api/v1/checkpoints/{checkpoint.pk}/pin",
                                       {"reason": "release 1"}).json()["pinned"] is True
    event = AuditEvent.objects.filter(action="pin").get()
    assert event.actor == api_users["maintainer"] and event.checkpoint_id == checkpoint.pk
    assert maintainer_client.post_json(f"/api/v1/checkpoints/{checkpoint.pk}/unpin").json()["pinned"] is False
    Checkpoint.objects.filter(pk=checkpoint.pk).update(status=Checkpoint.PRUNED)
    assert_problem(maintainer_client.post_json(f"/api/v1/checkpoints/{checkpoint.pk}/pin"), 409, kind="pin-refused")


def test_download_answers_like_the_page_and_refuses_a_changed_file_with_a_problem(viewer_client, run, settings):
    import hashlib

    settings.EXPORT_ROOT.mkdir(parents=True, exist_ok=True)
    path = settings.EXPORT_ROOT / "lists.pb"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    export = Export.objects.create(checkpoint=run.checkpoints.get(step=12), path=str(path), size_bytes=len(data),
                                   sha256=hashlib.sha256(data).hexdigest(), outputs=["probs"], verified=True,
                                   file_mtime_ns=path.stat().st_mtime_ns)
    url = f"/api/v1/exports/{export.pk}/download"
    whole = viewer_client.get(url)
    assert whole.status_code == 200 and b"".join(whole.streaming_content) == data
    assert whole["ETag"] == f'"{export.sha256}"' and whole["Accept-Ranges"] == "bytes"
    part = viewer_client.get(url, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and b"".join(part.streaming_content) == data[100:200]
    assert viewer_client.get(url, HTTP_IF_NONE_MATCH=whole["ETag"]).status_code == 304
    assert_problem(viewer_client.get(url, HTTP_RANGE=f"bytes={len(data) + 5}-"), 416)
    path.write_bytes(data[::-1])  # changed behind the dashboard's back: same size, other bytes
    os.utime(path, ns=(export.file_mtime_ns + 10**9, export.file_mtime_ns + 10**9))
    problem = assert_problem(viewer_client.get(url), 404, kind="export-changed")
    assert "changed on disk" in problem["detail"]
    path.unlink()
    assert_problem(viewer_client.get(url), 404, kind="export-missing")
