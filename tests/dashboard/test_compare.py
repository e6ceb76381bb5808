"""Compare pages: the pair page, the pick page, the step-over-step heatmap, permissions.

Jobs run through the real queue and a real worker process; page-only behaviour uses stored rows.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from django.urls import reverse

from dashboard import comparing, jobs, recording
from dashboard.models import Checkpoint, Comparison, Job, Run
from tests.dashboard.conftest import add_checkpoint_rows
from tests.dashboard.test_compare_command import make_compare_files, register
from tests.live import BASE_DIR, run_jobs_to_completion


def compare_url(a: Checkpoint, b: Checkpoint, **params: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{reverse('compare')}?a={a.pk}&b={b.pk}{extra}"


def chart_data(html: str) -> dict:
    match = re.search(r'<script id="compare-chart-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "chart data missing"
    return json.loads(match.group(1))


def table_names(html: str) -> list[str]:
    """Variable names in table order (row headers of the variables table)."""
    table = html.split('class="striped compare-table"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<th scope="row"><code>([^<]+)</code></th>', table)


@pytest.fixture
def no_leftover_jobs():
    """Tests without a worker enqueue real RQ jobs; drop them so no later burst worker runs them."""
    yield
    jobs.get_queue().empty()


# --- stored rows, no TensorFlow ----------------------------------------------------------------

VARIABLES = [
    # name, l2_a, l2_diff, relative_change, cosine, note, changed
    ("dense/kernel", 10.0, 0.5, 0.05, 0.99, None, True),
    ("dense/bias", 0.0, 0.3, None, None, "A is all zeros", True),
    ("embedding", 40.0, 0.0, 0.0, 1.0, None, False),
    ("output/kernel", 2.0, 1.0, 0.5, 0.8, None, True),
    ("output/kernel/Adam", 1.0, None, None, None, "only in A", False),
]


def fake_rows(specs=VARIABLES) -> list[dict]:
    rows = []
    for name, l2_a, l2_diff, relative, cosine, note, changed in specs:
        only_a = note == "only in A"
        rows.append({
            "name": name, "shape_a": [2, 2], "shape_b": None if only_a else [2, 2],
            "dtype_a": "float32", "dtype_b": None if only_a else "float32",
            "l2_a": l2_a, "l2_b": None if only_a else 1.0, "l2_diff": l2_diff, "max_abs_diff": l2_diff,
            "relative_change": relative, "cosine": cosine, "nan_a": 0, "nan_b": None if only_a else 0,
            "inf_a": 0, "inf_b": None if only_a else 0, "note": note, "changed": changed,
        })
    return rows


def store(a: Checkpoint, b: Checkpoint, **fields) -> Comparison:
    summary = {"variables": 5, "compared": 4, "changed": 3, "only_a": 1, "only_b": 0, "shape_changed": 0,
               "dtype_changed": 0, "not_numeric": 0, "with_nan_or_inf": 0, "total_l2_diff": 1.2,
               "max_relative_change": 0.5, "max_relative_change_variable": "output/kernel",
               "step_delta": 1, "size_delta": 1, "seconds_delta": 1.0, "elapsed_seconds": 0.2}
    values = {"fingerprint_a": a.fingerprint, "fingerprint_b": b.fingerprint, "summary": summary,
              "variables": fake_rows(), "metrics": {"loss": {"a": 1.0, "b": 0.5, "delta": -0.5, "relative": -0.5}}}
    values.update(fields)
    return Comparison.objects.create(a=a, b=b, **values)


@pytest.fixture
def pair(demo_rows) -> tuple[Checkpoint, Checkpoint]:
    Checkpoint.objects.filter(run=demo_rows).update(fingerprint="tf1:abc")
    rows = list(demo_rows.checkpoints.select_related("run").order_by("step"))
    return rows[0], rows[1]


@pytest.mark.django_db
def test_table_sorts_largest_relative_change_first_and_filters(client, viewer, pair):
    a, b = pair
    store(a, b)
    client.force_login(viewer)
    html = client.get(compare_url(a, b)).content.decode()
    # A bias that moved away from all zeros has no finite ratio: it sorts first ("did anything blow up?").
    # Model weights only by default: the optimizer's slot is hidden until the switch is turned off
    # (the filter form sent without it).
    assert table_names(html) == ["dense/bias", "output/kernel", "dense/kernel", "embedding"]
    assert "1 optimizer and training variables hidden" in html
    every = client.get(compare_url(a, b, filtered="1")).content.decode()
    assert table_names(every) == ["dense/bias", "output/kernel", "dense/kernel", "embedding", "output/kernel/Adam"]
    assert "−0.5" in html or "-0.5" in html  # metric delta
    data = chart_data(html)
    assert data["labels"] == ["output/kernel", "dense/kernel", "embedding"] and data["values"] == [0.5, 0.05, 0.0]

    changed = client.get(compare_url(a, b, changed="1", filtered="1")).content.decode()
    assert "embedding" not in table_names(changed)
    assert "output/kernel/Adam" in table_names(changed)  # present on one side only counts as a change
    assert table_names(client.get(compare_url(a, b, q="KERNEL", filtered="1")).content.decode()) == [
        "output/kernel", "dense/kernel", "output/kernel/Adam"
    ]
    assert chart_data(client.get(compare_url(a, b, q="dense")).content.decode())["labels"] == ["dense/kernel"]
    by_name = client.get(compare_url(a, b, sort="name", filtered="1")).content.decode()
    assert table_names(by_name) == sorted(r[0] for r in VARIABLES)
    by_cosine = table_names(client.get(compare_url(a, b, sort="cosine")).content.decode())
    assert by_cosine[:3] == ["output/kernel", "dense/kernel", "embedding"]  # ascending, missing values last
    fallback = client.get(compare_url(a, b, sort="drop table")).content.decode()
    assert table_names(fallback)[0] == "dense/bias"
    nothing = client.get(compare_url(a, b, q="no-such-variable")).content.decode()
    assert "No variable matches these filters" in nothing


@pytest.mark.django_db
def test_viewer_sees_a_stored_comparison_but_cannot_start_one(client, viewer, pair, demo_rows):
    a, b = pair
    store(a, b)
    client.force_login(viewer)
    page = client.get(compare_url(a, b))
    assert page.status_code == 200 and "output/kernel" in page.content.decode()

    c = demo_rows.checkpoints.get(step=3)
    html = client.get(compare_url(a, c)).content.decode()
    assert "Not compared yet" in html and "data-autostart" not in html and reverse("compare-start") not in html
    assert client.post(reverse("compare-start"), {"a": a.pk, "b": c.pk}).status_code == 403
    assert client.post(reverse("run-steps-start", args=[demo_rows.name]), {"last": 5}).status_code == 403
    steps = client.get(reverse("run-steps", args=[demo_rows.name])).content.decode()
    assert reverse("run-steps-start", args=[demo_rows.name]) not in steps
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_anonymous_users_are_sent_to_login(client, pair):
    a, b = pair
    for url in (compare_url(a, b), reverse("compare"), reverse("run-steps", args=[a.run.name])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_stale_comparison_is_not_shown_and_opening_the_pair_recomputes_it(client, operator, pair, no_leftover_jobs):
    a, b = pair
    store(a, b, fingerprint_b="tf1:before-the-rewrite")
    assert Comparison.for_pair(a, b) is None
    client.force_login(operator)
    html = client.get(compare_url(a, b)).content.decode()
    assert "out of date" in html and "data-autostart" in html and "<table" not in html

    response = client.post(reverse("compare-start"), {"a": a.pk, "b": b.pk})
    assert response.status_code == 302 and response["Location"] == compare_url(a, b)
    job = Job.objects.get()
    assert (job.kind, job.params, job.checkpoint_id) == (Job.COMPARE, {"a": a.pk, "b": b.pk}, b.pk)
    html = client.get(compare_url(a, b)).content.decode()
    assert reverse("compare-status", args=[job.pk]) in html and "data-autostart" not in html
    client.post(reverse("compare-start"), {"a": a.pk, "b": b.pk})
    assert Job.objects.count() == 1  # a second press joins the running job


@pytest.mark.django_db
def test_failed_job_shows_its_reason_and_a_retry_button_without_restarting_itself(client, operator, pair):
    a, b = pair
    Job.objects.create(kind=Job.COMPARE, status=Job.FAILED, params={"a": a.pk, "b": b.pk},
                       error="CannotCompare: cannot read 'w': shard ends early")
    client.force_login(operator)
    html = client.get(compare_url(a, b)).content.decode()
    assert "shard ends early" in html and "Try again" in html and "data-autostart" not in html


@pytest.mark.django_db
def test_ticked_history_rows_open_the_pair_older_first_and_bad_input_never_errors(client, operator, demo_rows, no_leftover_jobs):
    client.force_login(operator)
    run_page = client.get(reverse("run", args=[demo_rows.name])).content.decode()
    rows = {c.step: c for c in demo_rows.checkpoints.all()}
    assert 'id="compare-form"' in run_page and f'name="c" value="{rows[2].pk}" form="compare-form"' in run_page
    assert reverse("run-steps", args=[demo_rows.name]) in run_page

    response = client.get(reverse("compare"), {"c": [rows[3].pk, rows[1].pk], "run": demo_rows.name})
    assert response.status_code == 302 and response["Location"] == compare_url(rows[1], rows[3])
    one = client.get(reverse("compare"), {"c": [rows[2].pk], "run": demo_rows.name})
    assert one.status_code == 302 and f"a={rows[2].pk}" in one["Location"] and "pick=1" in one["Location"]
    pick = client.get(one["Location"]).content.decode()
    assert f'<option value="{rows[2].pk}" selected>' in pick
    three = client.get(reverse("compare"), {"c": [c.pk for c in rows.values()], "run": demo_rows.name}, follow=True)
    assert "Tick exactly two checkpoints" in three.content.decode()

    bad = client.get(reverse("compare"), {"a": "abc", "b": "999999"})
    assert bad.status_code == 200
    assert "“abc” is not a checkpoint id" in bad.content.decode() and "no checkpoint #999999" in bad.content.decode()
    posted = client.post(reverse("compare-start"), {"a": "x", "b": ""}, follow=True)
    assert posted.status_code == 200 and "is not a checkpoint id" in posted.content.decode()

    Checkpoint.objects.filter(pk=rows[3].pk).update(status=Checkpoint.PRUNED)
    html = client.get(compare_url(rows[1], rows[3])).content.decode()
    assert "Cannot compare" in html and "data-autostart" not in html
    client.post(reverse("compare-start"), {"a": rows[1].pk, "b": rows[3].pk})
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_pick_page_chooses_run_and_step_per_side_across_runs(client, viewer, demo_rows, checkpoint_root):
    (checkpoint_root / "other").mkdir()
    other = Run.objects.create(name="other", directory=str(checkpoint_root / "other"))
    add_checkpoint_rows(other, 2, start_step=100)
    client.force_login(viewer)

    html = client.get(reverse("compare"), {"a_run": "rows", "b_run": "other", "pick": "1"}).content.decode()
    a_select = html.split('name="a"', 1)[1].split("</select>", 1)[0]
    b_select = html.split('name="b"', 1)[1].split("</select>", 1)[0]
    assert "model.ckpt-3" in a_select and "model.ckpt-100" not in a_select
    assert "model.ckpt-101" in b_select and "model.ckpt-3" not in b_select
    assert 'hx-get="/compare/"' in html  # changing a run re-renders that side's steps

    a = demo_rows.checkpoints.get(step=2)
    b = other.checkpoints.get(step=101)
    page = client.get(reverse("compare"), {"a_run": "rows", "a": a.pk, "b_run": "other", "b": b.pk})
    assert page.status_code == 200
    assert page.templates[0].name == "dashboard/compare.html"
    content = page.content.decode()
    assert "model.ckpt-2" in content and "model.ckpt-101" in content and "other" in content

    missing = client.get(reverse("compare"), {"a_run": "rows", "a": a.pk, "b_run": "other"}).content.decode()
    assert "Choose a checkpoint for both A and B" in missing

    Run.objects.all().delete()
    assert "Nothing to compare yet" in client.get(reverse("compare")).content.decode()


@pytest.mark.django_db
def test_heatmap_empty_states_and_stored_result_with_legend(client, operator, viewer, checkpoint_root):
    (checkpoint_root / "one").mkdir()
    lonely = Run.objects.create(name="one", directory=str(checkpoint_root / "one"))
    add_checkpoint_rows(lonely, 1)
    client.force_login(operator)
    html = client.get(reverse("run-steps", args=["one"])).content.decode()
    assert "needs at least two readable checkpoints" in html and "Compute</button>" not in html

    (checkpoint_root / "three").mkdir()
    run = Run.objects.create(name="three", directory=str(checkpoint_root / "three"))
    add_checkpoint_rows(run, 3)
    html = client.get(reverse("run-steps", args=["three"])).content.decode()
    assert "Not computed yet" in html and "Compute</button>" in html

    ckpts = list(run.checkpoints.order_by("step"))
    result = {
        "mode": "steps", "last": 50,
        "checkpoints": [{"id": c.pk, "step": c.step, "prefix": c.prefix, "fingerprint": c.fingerprint} for c in ckpts],
        "variables": ["bias", "kernel", "new"],
        "relative_change": {"bias": [None, 0.0], "kernel": [0.0042, 3.5], "new": [None, None]},
        "l2_diff": {"bias": [0.2, 0.0], "kernel": [0.1, 2.0], "new": [None, None]},
        "notes": {"bias": ["A is all zeros", None], "kernel": [None, None], "new": ["absent", "only in B"]},
    }
    Job.objects.create(kind=Job.COMPARE, run=run, status=Job.FINISHED, params={"mode": "steps", "last": 50},
                       result=result)
    client.force_login(viewer)
    # By default each variable is scaled to its own largest change: kernel's 0.0042 is pale next
    # to its 3.5, which takes the darkest colour; each cell opens the comparison of its pair.
    html = client.get(reverse("run-steps", args=["three"])).content.decode()
    kernel = html.split("<tbody>", 1)[1].split("<code>kernel</code>", 1)[1].split("</tr>", 1)[0]
    assert 'class="cell hm-ffffd9" title="0.0042"' in kernel and 'class="cell hm-3f0013 dark" title="3.5"' in kernel
    assert f'href="/compare/?a={ckpts[0].pk}&amp;b={ckpts[1].pk}" class="cell-link"' in kernel
    assert 'aria-checked="false"' in html and "of the variable&#x27;s largest change" in html

    html = client.get(reverse("run-steps", args=["three"]) + "?scale=absolute&log=1").content.decode()
    assert 'class="heatmap heatmap-wide"' in html and 'aria-label="Colour scale"' in html
    body = html.split("<tbody>", 1)[1]
    kernel = body.split("<code>kernel</code>", 1)[1].split("</tr>", 1)[0]
    # The 0.001 – 0.01 decade's colour, by a class (the Content-Security-Policy refuses style
    # attributes) that the stylesheet maps to exactly that colour.
    assert 'class="cell hm-fd8d3c" title="0.0042"' in kernel
    assert ".hm-fd8d3c { background: #fd8d3c; }" in (BASE_DIR / "dashboard/static/dashboard/site.css").read_text()
    assert 'title="3.5"' in kernel and "dark" in kernel
    bias = body.split("<code>bias</code>", 1)[1].split("</tr>", 1)[0]
    assert "moved away from all zeros" in bias and 'title="0 (no change)"' in bias
    assert 'title="only in B"' in body
    assert "changed since" not in html
    assert "Recompute" not in html  # viewers get no button

    add_checkpoint_rows(run, 1, start_step=4)
    assert "changed since" in client.get(reverse("run-steps", args=["three"])).content.decode()


# --- real checkpoints, real worker -----------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_compare_files(tmp_path_factory.mktemp("compare-pages").resolve())


@pytest.fixture
def demo(files, settings) -> Run:
    settings.CHECKPOINT_ROOTS = [files.root]
    run = register(files.root, "demo")
    recording.record_metrics(run, {c.prefix: c.metrics for c in files.demo.checkpoints})
    return run


@pytest.mark.tf
@pytest.mark.django_db(transaction=True)
def test_compare_job_on_a_real_worker_stores_the_result_and_the_second_open_is_instant(client, operator, demo):
    a, b = demo.checkpoints.get(step=25), demo.checkpoints.get(step=75)
    client.force_login(operator)
    ticked = client.get(reverse("compare"), {"c": [b.pk, a.pk], "run": demo.name})
    url = ticked["Location"]
    assert url == compare_url(a, b)
    assert "data-autostart" in client.get(url).content.decode()  # the page starts the job on opening

    assert client.post(reverse("compare-start"), {"a": a.pk, "b": b.pk})["Location"] == url
    job = Job.objects.get()
    status_url = reverse("compare-status", args=[job.pk])
    running = client.get(url).content.decode()
    assert f'hx-get="{status_url}"' in running and 'hx-trigger="every 1s"' in running
    assert "HX-Refresh" not in client.get(status_url).headers

    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    comparison = Comparison.objects.get(a=a, b=b)
    assert comparison.job_id == job.pk and job.result["comparison"] == comparison.pk
    assert client.get(status_url).headers["HX-Refresh"] == "true"  # the polling page reloads into the result

    html = client.get(url + "&filtered=1").content.decode()  # the weights-only switch off
    names = table_names(html)
    assert sorted(names) == sorted(v["name"] for v in comparison.variables)
    relative = {v["name"]: v["relative_change"] for v in comparison.variables}
    assert [relative[n] for n in names] == sorted(relative.values(), reverse=True)
    data = chart_data(html)
    assert data["labels"] == names and data["values"] == [relative[n] for n in names]
    assert "hidden/kernel/Adam" in names and "loss" in html  # optimizer slots and metric deltas shown
    only_bias = table_names(client.get(url + "&q=bias&changed=1").content.decode())
    assert only_bias and all("bias" in n for n in only_bias)

    assert client.post(reverse("compare-start"), {"a": a.pk, "b": b.pk}).status_code == 302
    assert Job.objects.count() == 1  # stored and fresh: opened again without a new job


@pytest.mark.tf
@pytest.mark.django_db(transaction=True)
def test_step_over_step_job_on_a_real_worker_renders_the_heatmap(client, operator, demo, files):
    client.force_login(operator)
    steps_url = reverse("run-steps", args=[demo.name])
    assert "Not computed yet" in client.get(steps_url).content.decode()
    assert 'value="50" selected' in client.get(steps_url).content.decode()  # the default: newest 50

    client.post(reverse("run-steps-start", args=[demo.name]), {"last": "nope"})
    assert not Job.objects.exists()
    client.post(reverse("run-steps-start", args=[demo.name]), {"last": 2})
    job = Job.objects.get()
    assert job.params == {"mode": "steps", "last": 2}
    assert reverse("compare-status", args=[job.pk]) in client.get(steps_url).content.decode()

    run_jobs_to_completion()

    job.refresh_from_db()
    assert job.status == Job.FINISHED, job.error
    assert [c["step"] for c in job.result["checkpoints"]] == [50, 75]  # only the newest two
    assert comparing.latest_step_over_step(demo) == job
    html = client.get(steps_url).content.decode()
    assert 'class="heatmap heatmap-wide"' in html and 'aria-label="Colour scale"' in html

    import tensorflow as tf

    paths = [demo.checkpoints.get(step=s).path for s in (50, 75)]
    x, y = (tf.train.load_checkpoint(p).get_tensor("hidden/kernel").astype(np.float64) for p in paths)
    expected = np.linalg.norm(y - x) / np.linalg.norm(x)
    assert job.result["relative_change"]["hidden/kernel"][0] == pytest.approx(expected, rel=1e-9)
    row = html.split("<code>hidden/kernel</code>", 1)[1].split("</tr>", 1)[0]
    assert f'title="{expected:.3g}"' in row
    assert not math.isnan(expected)
