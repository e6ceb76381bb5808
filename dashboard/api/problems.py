"""Errors as RFC 9457 problem details: ``{"type", "title", "status", "detail", ...}``.

Every error under ``/api/`` is one, whoever produced it: an endpoint (``ApiProblem``), django-ninja
(validation, authentication, throttling), or something in front of the API that answers in HTML
or plain text (an unknown route, a method not allowed, a CSRF failure, the NUL-byte check), which
``ProblemDetailsMiddleware`` rewrites. Never HTML, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus

from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

API_PATH = "/api/"
CONTENT_TYPE = "application/problem+json"
# Problem types are URNs: stable identifiers a client can switch on, with nothing to fetch.
TYPE_PREFIX = "urn:checkpoint-dashboard:problem:"


class ApiProblem(Exception):
    """An error an endpoint answers with; ``extra`` members are added to the problem object."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, title: str | None = None,
                 headers: dict[str, str] | None = None, **extra: object):
        super().__init__(detail)
        self.status, self.detail, self.kind = status, detail, kind
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra


def problem_body(status: int, detail: str, *, kind: str | None = None, title: str | None = None,
                 **extra: object) -> dict:
    return {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_response(status: int, detail: str, *, kind: str | None = None, title: str | None = None,
                     headers: dict[str, str] | None = None, **extra: object) -> HttpResponse:
    body = problem_body(status, detail, kind=kind, title=title, **extra)
    response = HttpResponse(json.dumps(body), status=status, content_type=CONTENT_TYPE)
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def from_problem(problem: ApiProblem) -> HttpResponse:
    return problem_response(problem.status, problem.detail, kind=problem.kind, title=problem.title,
                            headers=problem.headers, **problem.extra)


_PLAIN_DETAILS = {
    400: "The request is malformed.",
    403: "This request is not allowed (for a browser session: the CSRF token is missing or wrong).",
    404: "There is no such resource in this API.",
    405: "This method is not allowed here.",
    413: "The request is too large.",
    500: "The server failed to answer this request; it has been logged.",
}


class ProblemDetailsMiddleware:
    """Turn any non-JSON error response under ``/api/`` into problem details, keeping its headers
    (``Allow`` of a 405, ``Retry-After``); a short plain-text body becomes the ``detail``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(API_PATH) or response.status_code < 400:
            return response
        content_type = response.get("Content-Type", "")
        if "json" in content_type or response.streaming:
            return response
        detail = _PLAIN_DETAILS.get(response.status_code, HTTPStatus(response.status_code).phrase + ".")
        if content_type.startswith("text/plain"):
            text = response.content.decode("utf-8", "replace").strip()
            if text and len(text) < 300:
                detail = text
        kept = {k: v for k, v in response.items() if k in ("Allow", "Retry-After", "Content-Range", "WWW-Authenticate")}
        return problem_response(response.status_code, detail, headers=kept)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(API_PATH):
            return None
        log.exception("API request failed: %s %s", request.method, request.path)
        return problem_response(500, _PLAIN_DETAILS[500])
