"""Flows (b) and (c): freeze a checkpoint and watch the job finish in place, then download the export
(of a run in a local directory, and of one in a bucket: the worker stages its files first).

The downloaded ``.pb`` is checked twice: its sha256 against the one the export page shows, and its
``probs`` on the recipe's sample input against the checkpoint it came from (restored the seed's
way: ``import_meta_graph`` of the run's first ``.meta`` + ``Saver.restore``).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.django_db(transaction=True)]

STEP = 250
JOB_TIMEOUT_MS = 60_000  # the first job of the session waits for the worker to import TensorFlow


def test_freeze_a_step_watch_it_verify_then_download_the_same_bytes(
    tracked, e2e_operator, e2e_worker, demo_run, demo_directory, tmp_path
):
    page = tracked.page
    tracked.watch()
    tracked.login(e2e_operator.username)

    # (b) Run → a step → Freeze…: the suggested output is pre-selected.
    tracked.goto(f"/runs/{demo_run.name}/")
    page.get_by_role("link", name=f"model.ckpt-{STEP}", exact=True).click()
    page.wait_for_selector(f"h1 >> text=model.ckpt-{STEP}")
    expect(page.locator("#checkpoint-exports")).to_contain_text("Not frozen yet.")
    page.get_by_role("button", name="Freeze / export…").click()
    page.wait_for_selector(f"h1 >> text=Export model.ckpt-{STEP}")
    expect(page.get_by_label("probs", exact=True)).to_be_checked()
    expect(page.get_by_text("x", exact=True)).to_be_visible()  # the graph's input, listed
    tracked.shot("freeze-form")

    page.get_by_role("button", name="Start export job").click()
    page.wait_for_selector(f"h1 >> text=model.ckpt-{STEP}")
    expect(page.locator(".messages")).to_contain_text(f"Freezing model.ckpt-{STEP}: the export appears below")
    loads_after_submit = tracked.loads()
    progress = page.locator(".job-progress", has_text="freeze #")
    # The page was rendered while the job waited or ran: what follows is htmx polling, not a reload.
    expect(page.get_by_text("Freezing… the export appears here")).to_be_visible()
    tracked.shot("checkpoint-freezing")

    expect(progress.locator(".badge")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    expect(progress.locator("progress")).to_have_attribute("value", "100")
    expect(progress).to_contain_text("probs.pb written, verified")
    exports = page.locator("#checkpoint-exports")
    expect(exports.locator(".badge.ok")).to_contain_text("verified · max diff", timeout=10_000)
    expect(page.get_by_text("Freezing… the export appears here")).to_have_count(0)
    assert tracked.loads() == loads_after_submit, "the page reloaded instead of updating itself"
    assert tracked.progress_values("freeze #")[-1] == 100
    tracked.shot("checkpoint-frozen")

    # The export's page: verified, with its max abs difference and sha256.
    from dashboard.models import Export

    export = Export.objects.get(checkpoint__run=demo_run, checkpoint__step=STEP)
    assert export.verified and export.max_abs_diff is not None and export.max_abs_diff <= 1e-6
    exports.get_by_role("link", name="probs.pb").click()
    page.wait_for_selector("h1 >> text=probs.pb")
    expect(page.locator(".badges .badge.ok")).to_have_text(f"verified · max diff {export.max_abs_diff:.2g}")
    stat = page.locator(".stats > div", has_text="max abs diff")
    expect(stat.locator(".stat")).to_have_text(f"{export.max_abs_diff:.3g}")
    expect(page.get_by_text("the recipe's sample for")).to_be_visible()
    shown_sha256 = page.locator("dt", has_text="SHA-256").locator("xpath=following-sibling::dd[1]").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", shown_sha256), shown_sha256
    tracked.shot("export")

    # (c) Download it: the same bytes the page vouches for.
    with page.expect_download() as download_info:
        page.get_by_role("button", name=re.compile(r"^Download ")).click()
    download = download_info.value
    assert download.suggested_filename == f"{demo_run.name}-step{STEP}-probs.pb"
    downloaded = tmp_path / download.suggested_filename
    download.save_as(downloaded)
    data = downloaded.read_bytes()
    assert hashlib.sha256(data).hexdigest() == shown_sha256
    assert len(data) == export.size_bytes

    frozen_probs, restored_probs = _probs_of_frozen_and_checkpoint(data, demo_directory[0], STEP)
    assert frozen_probs.shape == restored_probs.shape == (4, 2)
    np.testing.assert_allclose(frozen_probs, restored_probs, rtol=0, atol=1e-6)

    # The other pages of the flow, each free of errors.
    page.get_by_role("link", name="Exports", exact=True).first.click()
    page.wait_for_selector("h1 >> text=Exports")
    expect(page.locator("table tbody tr")).to_have_count(1)
    expect(page.locator("table tbody tr")).to_contain_text(shown_sha256[:12])
    tracked.shot("exports")
    page.get_by_role("link", name="Jobs", exact=True).first.click()
    page.wait_for_selector("h1 >> text=Jobs")
    tracked.shot("jobs")
    page.get_by_role("link", name=re.compile(r"^freeze #\d+$")).first.click()
    page.wait_for_selector("h1 >> text=/Freeze job #\\d+/")
    expect(page.locator(".job-progress .badge")).to_have_text("finished")
    tracked.shot("job")


def _probs_of_frozen_and_checkpoint(pb: bytes, directory, step: int) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` on the recipe's sample input from the frozen bytes and from the checkpoint itself."""
    import tensorflow as tf

    from persistence.recipes.antispam import AntiSpamRecipe
    from persistence.restore import restore_and_run

    sample = AntiSpamRecipe().sample_input()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb)
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            frozen = sess.run("probs:0", feed_dict={"x:0": sample["x"]})
    # The demo saves its meta graph with the first checkpoint only (write_meta_graph=False after).
    first_meta = sorted(directory.glob("*.meta"))
    assert [m.name for m in first_meta] == ["model.ckpt-5.meta"]
    restored = restore_and_run(
        str(directory / f"model.ckpt-{step}"), str(first_meta[0]), feed=sample, outputs=["probs"]
    ).outputs["probs"]
    return np.asarray(frozen), np.asarray(restored)


@pytest.mark.local_only("about roles and error pages, not about where checkpoints are stored")
def test_viewers_see_no_freeze_button_and_get_the_403_page(tracked, e2e_viewer, demo_run):
    page = tracked.page
    checkpoint = demo_run.checkpoints.get(step=STEP)
    tracked.login(e2e_viewer.username)
    tracked.goto(checkpoint.get_absolute_url())
    page.wait_for_selector(f"h1 >> text=model.ckpt-{STEP}")
    expect(page.get_by_role("button", name="Freeze / export…")).to_have_count(0)

    tracked.expected_statuses = {403, 404}
    response = tracked.goto(f"{checkpoint.get_absolute_url()}freeze/")
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("link", name="Back to runs")).to_be_visible()
    tracked.shot("error-403")

    response = tracked.goto("/exports/987654/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    tracked.shot("error-404")
