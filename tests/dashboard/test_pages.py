"""History pages: login, runs list, run history, checkpoint detail, chart data, registering runs."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard.models import Checkpoint, Job, Run
from tests.dashboard.conftest import add_checkpoint_rows

pytestmark = pytest.mark.django_db

# Session, user, two permission lookups, run with its cached summary, page rows, recent jobs: whatever the size.
RUN_PAGE_QUERIES = 8


@pytest.mark.parametrize("url", ["/", "/runs/new/", "/runs/rows/", "/jobs/", "/runs/rows/chart.json"])
def test_anonymous_users_are_sent_to_login(client, demo_rows, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_renders_and_logs_in(client, viewer):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": viewer.username, "password": "pw-for-tests-only"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_runs_list_shows_counts_latest_step_and_size(client, viewer, demo_rows):
    client.force_login(viewer)
    html = client.get("/").content.decode()
    assert "rows" in html and demo_rows.directory in html
    row = Run.objects.get(pk=demo_rows.pk).checkpoints.order_by("-step").first()
    assert f">{row.step}<" in html  # latest step
    assert "3.0 kB" in html  # 1001 + 1002 + 1003 bytes


def test_runs_list_empty_state_says_what_to_do(client, operator):
    client.force_login(operator)
    html = client.get("/").content.decode()
    assert "No runs yet" in html and reverse("run-new") in html


def test_run_page_paginates_and_sorts(client, viewer, demo_rows):
    add_checkpoint_rows(demo_rows, 120, start_step=10)
    client.force_login(viewer)
    first = client.get(reverse("run", args=["rows"])).content.decode()
    assert "model.ckpt-129" in first and "model.ckpt-10<" not in first  # newest first
    page3 = client.get(reverse("run", args=["rows"]), {"last": 1}).content.decode()
    assert "model.ckpt-1<" in page3 and "model.ckpt-129" not in page3
    by_size = client.get(reverse("run", args=["rows"]), {"sort": "size"}).content.decode()
    assert by_size.index("model.ckpt-1<") < by_size.index("model.ckpt-2<")
    # an unknown sort key falls back to the default rather than erroring
    assert client.get(reverse("run", args=["rows"]), {"sort": "drop table"}).status_code == 200


def test_run_page_badges(client, viewer, demo_rows):
    Checkpoint.objects.filter(run=demo_rows, step=3).update(latest_in=["checkpoint"], has_own_meta=True)
    Checkpoint.objects.filter(run=demo_rows, step=2).update(status="corrupt", pinned=True, pin_reason="golden")
    client.force_login(viewer)
    html = client.get(reverse("run", args=["rows"])).content.decode()
    for badge in (">latest (state file)<", ">corrupt<", ">pinned<", ">meta<"):
        assert badge in html


def test_run_page_with_100k_checkpoints_uses_constant_queries(
    client, viewer, demo_rows, django_assert_num_queries
):
    client.force_login(viewer)
    url = reverse("run", args=["rows"])
    with django_assert_num_queries(RUN_PAGE_QUERIES):
        small = client.get(url)
    assert small.status_code == 200

    add_checkpoint_rows(demo_rows, 100_000, start_step=10)
    with django_assert_num_queries(RUN_PAGE_QUERIES):
        big = client.get(url)
    assert big.status_code == 200
    assert "100,003" in big.content.decode()
    assert "model.ckpt-100009" in big.content.decode()


def test_chart_data_is_thinned_for_long_runs(client, viewer, demo_rows):
    add_checkpoint_rows(demo_rows, 5_000, start_step=10)
    client.force_login(viewer)
    data = client.get(reverse("run-chart", args=["rows"])).json()
    assert data["total"] == 5_003
    assert 400 <= data["shown"] <= 500
    steps = data["steps"]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 5_009
    # Spread over the steps: no stretch of the run is left out.
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) <= 2 * 5_009 / 499
    assert len(data["metrics"]["loss"]) == len(steps) == len(data["size_bytes"])


def _rows_read(queries: list[dict], table: str, *, any_relation: bool = False) -> int:
    """Rows of ``table`` (or, with ``any_relation``, of every scan) that the captured queries naming
    ``table`` read, by PostgreSQL's EXPLAIN ANALYZE of each."""
    from django.db import connection

    read = 0
    with connection.cursor() as cursor:
        for sql in (q["sql"] for q in queries if table in q["sql"]):
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
            nodes = [cursor.fetchone()[0][0]["Plan"]]
            while nodes:
                node = nodes.pop()
                nodes.extend(node.get("Plans", []))
                if node["Node Type"].endswith("Scan") and (any_relation or node.get("Relation Name") == table):
                    read += node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
    return read


def test_chart_of_a_long_run_reads_as_many_rows_as_it_shows(client, viewer, demo_rows):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("rows read are counted from PostgreSQL's EXPLAIN ANALYZE")
    add_checkpoint_rows(demo_rows, 20_000, start_step=10)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE dashboard_checkpoint")  # the planner's estimates, as a deployment has them
    client.force_login(viewer)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("run-chart", args=["rows"])).json()["shown"] <= 500
    read = _rows_read(queries.captured_queries, "dashboard_checkpoint", any_relation=True)
    # The two ends, 500 probes (each reading its VALUES row and one index entry) and the 500 rows.
    assert read <= 4 * 500 + 10, f"{read} checkpoint rows read to chart a run of 20,003"


@pytest.mark.parametrize("sort", ["-step", "-metric:loss"])
def test_history_page_reads_export_rows_of_its_slice_only(client, viewer, demo_rows, sort):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dashboard.models import Export, MetricValue

    if connection.vendor != "postgresql":
        pytest.skip("rows read are counted from PostgreSQL's EXPLAIN ANALYZE")
    add_checkpoint_rows(demo_rows, 3_000, start_step=10)  # with their loss's sort rows
    assert MetricValue.objects.filter(checkpoint__run=demo_rows, name="loss").count() == 3_003
    # Every checkpoint exported: a deployment's export table is far larger than one page.
    Export.objects.bulk_create(Export(checkpoint_id=pk, path=f"/exports/{pk}.pb", sha256="0" * 64)
                               for pk in demo_rows.checkpoints.values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE dashboard_checkpoint; ANALYZE dashboard_export; ANALYZE dashboard_metricvalue")
    client.force_login(viewer)
    with CaptureQueriesContext(connection) as queries:
        html = client.get(reverse("run", args=["rows"]), {"sort": sort}).content.decode()
    assert html.count(">exported<") == 50
    read = _rows_read(queries.captured_queries, "dashboard_export")
    assert read <= 2 * 50, f"{read} export rows read to show a page of 50 checkpoints"


def test_checkpoint_page_shows_files_variables_and_meta_source(client, viewer, demo_rows):
    first, second = Checkpoint.objects.filter(run=demo_rows).order_by("step")[:2]
    first.has_own_meta = True
    first.save()
    second.meta_source = first
    second.variables = [{"name": "hidden/kernel", "shape": [512, 64], "dtype": "float32", "bytes": 131072}]
    second.variable_count = 1
    second.latest_in = ["checkpoint"]
    second.save()
    client.force_login(viewer)
    html = client.get(second.get_absolute_url()).content.decode()
    assert "hidden/kernel" in html and "[512, 64]" in html and "131.1 kB" in html
    assert first.prefix in html and "meta graph of" in html
    assert "latest (state file)" in html and "latest in checkpoint" not in html


def test_checkpoint_of_another_run_is_404(client, viewer, demo_rows, checkpoint_root):
    (checkpoint_root / "other").mkdir()
    other = Run.objects.create(name="other", directory=str(checkpoint_root / "other"))
    ckpt = Checkpoint.objects.filter(run=demo_rows).first()
    client.force_login(viewer)
    response = client.get(reverse("checkpoint", args=[other.name, ckpt.pk]))
    assert response.status_code == 404
    assert "Not found" in response.content.decode()


def test_register_form_errors_inline_for_outside_roots_and_missing_paths(client, operator, checkpoint_root, tmp_path):
    client.force_login(operator)
    outside = tmp_path / "outside"
    outside.mkdir()
    response = client.post(reverse("run-new"), {"name": "x", "directory": str(outside)})
    assert response.status_code == 200
    assert "outside the checkpoint roots" in response.content.decode()
    response = client.post(reverse("run-new"), {"name": "x", "directory": str(checkpoint_root / "nope")})
    assert "does not exist" in response.content.decode()
    response = client.post(reverse("run-new"), {"name": "x", "directory": "relative/path"})
    assert "absolute path" in response.content.decode()
    assert not Run.objects.exists()


def test_register_creates_run_and_queues_a_scan(client, operator, checkpoint_root):
    (checkpoint_root / "fresh-run").mkdir()
    client.force_login(operator)
    response = client.post(reverse("run-new"), {"name": "", "directory": str(checkpoint_root / "fresh-run")})
    run = Run.objects.get(name="fresh-run")
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    job = Job.objects.get(run=run)
    assert job.kind == Job.SCAN and job.rq_job_id == f"job-{job.pk}"
    from dashboard.jobs import get_queue

    assert job.rq_job_id in get_queue().job_ids  # really on the (real) Redis queue


def test_register_same_directory_twice_is_a_form_error(client, operator, checkpoint_root):
    (checkpoint_root / "d").mkdir()
    Run.objects.create(name="d", directory=str(checkpoint_root / "d"))
    client.force_login(operator)
    response = client.post(reverse("run-new"), {"name": "d2", "directory": str(checkpoint_root / "d") + "/"})
    assert "already exists" in response.content.decode() or "already tracked" in response.content.decode()
    assert Run.objects.count() == 1


def test_viewer_cannot_register_or_scan(client, viewer, demo_rows):
    client.force_login(viewer)
    assert client.get(reverse("run-new")).status_code == 403
    assert client.post(reverse("run-scan", args=["rows"])).status_code == 403
    html = client.get(reverse("run", args=["rows"])).content.decode()
    assert "Scan now" not in html


@pytest.mark.parametrize("url", ["/jobs/?run=%00", "/exports/?run=a%00b", "/audit/?run=%00", "/runs/rows/?sort=%00"])
def test_a_nul_byte_in_a_request_is_a_bad_request(client, viewer, demo_rows, url):
    client.force_login(viewer)
    response = client.get(url)
    assert response.status_code == 400
    assert b"NUL" in response.content
