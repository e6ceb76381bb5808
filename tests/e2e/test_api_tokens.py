"""The "API tokens" page: create a token (shown once), use it over HTTP on a run's checkpoints (a
local run, and a run in a bucket), revoke it."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.e2e.backends import CREDENTIALS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_create_a_token_use_it_then_revoke_it(tracked, e2e_operator, live_server, demo_run, backend):
    page = tracked.page
    tracked.login(e2e_operator.username)
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_selector("h1 >> text=API tokens")
    expect(page.get_by_text("No tokens yet")).to_be_visible()
    # Operators may make viewer and operator tokens, not maintainer ones.
    options = page.locator("select[name=scope] option").all_inner_texts()
    assert options == ["viewer", "operator"]

    page.get_by_label("Name").fill("nightly freeze")
    page.locator("select[name=scope]").select_option("operator")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").inner_text().strip()
    assert re.fullmatch(r"ckd_[A-Za-z0-9_-]{40}", secret)
    expect(page.locator(".messages")).to_contain_text("Copy it now")
    tracked.shot("api-tokens-created")

    api = f"{live_server.url}/api/v1/runs"
    assert requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=30).status_code == 200
    # The run's checkpoints over the API, as the pages show them, and no credentials in the answer.
    answer = requests.get(f"{api}/{demo_run.name}/checkpoints", headers={"Authorization": f"Bearer {secret}"},
                          timeout=30)
    assert answer.status_code == 200, answer.text[:2000]
    assert "model.ckpt-300" in answer.text
    assert not [c for c in CREDENTIALS if c in answer.content], "the API answer shows the S3 credentials"

    tracked.goto("/tokens/")
    expect(page.locator("#new-token")).to_have_count(0)  # shown once
    row = page.locator("table.tokens tbody tr", has_text="nightly freeze")
    expect(row).to_contain_text(secret[:12])
    expect(row.locator(".badge.ok")).to_have_text("active")
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator(".messages")).to_contain_text("revoked")
    expect(page.locator("table.tokens tbody tr", has_text="nightly freeze").locator(".badge.warn")).to_have_text(
        "revoked")
    tracked.shot("api-tokens-revoked")

    refused = requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert refused.status_code == 401 and refused.json()["detail"].endswith("was revoked.")


def test_the_interactive_api_docs_render_from_local_files(tracked, e2e_viewer):
    page = tracked.page
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith((tracked.base_url, "data:")) else None)
    tracked.login(e2e_viewer.username)
    tracked.goto("/api/v1/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Checkpoint dashboard API", timeout=20_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/exports/{id}/download").first).to_be_visible()
    tracked.shot("api-docs")
    assert outside == []
