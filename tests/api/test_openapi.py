"""The OpenAPI document validates, lists every endpoint with its schemas, and the docs are local."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db

ENDPOINTS = {
    ("get", "/api/v1/runs"), ("post", "/api/v1/runs"), ("get", "/api/v1/runs/{name}"),
    ("post", "/api/v1/runs/{name}/scan"), ("get", "/api/v1/runs/{name}/checkpoints"),
    ("get", "/api/v1/checkpoints/{id}"), ("post", "/api/v1/checkpoints/{id}/freeze"),
    ("post", "/api/v1/checkpoints/{id}/verify"), ("post", "/api/v1/checkpoints/{id}/pin"),
    ("post", "/api/v1/checkpoints/{id}/unpin"), ("get", "/api/v1/jobs/{id}"), ("post", "/api/v1/jobs/{id}/cancel"),
    ("get", "/api/v1/exports"), ("get", "/api/v1/exports/{id}"), ("get", "/api/v1/exports/{id}/download"),
    ("post", "/api/v1/runs/{name}/prune-preview"), ("post", "/api/v1/runs/{name}/prune"),
}


def test_the_openapi_document_validates_and_lists_every_endpoint_with_schemas():
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200

    def no_duplicates(pairs: list) -> dict:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in the document: {keys}"
        return dict(pairs)

    spec = json.loads(response.content, object_pairs_hook=no_duplicates)
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    listed = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert ENDPOINTS <= listed
    schemas = spec["components"]["schemas"]
    for name in ("RunOut", "CheckpointOut", "CheckpointDetail", "ExportOut", "JobOut", "JobStarted", "Problem",
                 "ValidationProblem", "PrunePreview", "FreezeIn", "PruneIn", "PolicyIn", "CheckpointPage"):
        assert name in schemas, name
    assert {"items", "next"} <= set(schemas["CheckpointPage"]["properties"])
    assert {"id", "run", "step", "checkpoint_id", "outputs", "sha256", "size_bytes", "verified", "max_abs_diff",
            "created_at", "download_url"} <= set(schemas["ExportOut"]["properties"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status in ("401", "403", "429"):
                content = operation["responses"][status]["content"]
                assert "application/problem+json" in content, (method, path, status)
            success = [s for s in operation["responses"] if s.startswith("2")]
            assert success, (method, path)
    assert {"BearerToken", "BrowserSession"} <= set(spec["components"]["securitySchemes"])
    freeze = spec["paths"]["/api/v1/checkpoints/{id}/freeze"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in freeze["parameters"])


def test_the_interactive_docs_load_only_local_files():
    client = Client()
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources
    assert any("swagger-ui-bundle.js" in s for s in sources)
    from django.conf import settings
    from django.contrib.staticfiles import finders

    static_url = "/" + settings.STATIC_URL.strip("/") + "/"
    for source in sources:  # each one a file of the installed apps' static files, served by whitenoise
        assert source.startswith(static_url), source
        assert finders.find(source.removeprefix(static_url).split("?")[0]), source
