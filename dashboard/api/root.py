"""The API's root: ``/api/v1``, its routers, error handlers and URLs.

A feature adds its endpoints as a router module of this package and one entry in ``ROUTERS``.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

from . import aliases, checkpoints, exports, jobs, retention, runs, webhooks
from .auth import BearerToken, BrowserSession, ClientThrottle
from .problems import ApiProblem, from_problem, problem_response
from .schemas import Problem, ValidationProblem

log = logging.getLogger(__name__)

PREFIX = "api/v1/"
ROUTERS = [runs, checkpoints, jobs, exports, retention, aliases, webhooks]

# Documented on every operation: errors come from handlers, not from the endpoints' return values.
ERRORS = {
    "400": "Invalid input: `errors` names each field",
    "401": "No token, or an unknown, expired or revoked one",
    "403": "The token's scope or the user's role is too low (or a session request lacks its CSRF token)",
    "404": "No such object",
    "429": "Throttled: retry after `Retry-After` seconds",
}
POST_ERRORS = {
    "409": "Conflict with the current state (e.g. the run changed since the preview; a freeze is running)",
    "503": "The job queue is unavailable; nothing was started",
}


class DashboardAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs):
        schema = super().get_openapi_schema(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, ValidationProblem):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        for operations in schema["paths"].values():
            for method, operation in operations.items():
                # django-ninja keys responses by int; JSON keys are strings, and both of one status
                # would be a duplicate key in the document.
                operation["responses"] = {str(status): r for status, r in operation["responses"].items()}
                errors = {**ERRORS, **(POST_ERRORS if method == "post" else {})}
                for status, description in errors.items():
                    name = "ValidationProblem" if status == "400" else "Problem"
                    content = {"application/problem+json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
                    operation["responses"].setdefault(status, {"description": description, "content": content})
        return schema


api = DashboardAPI(
    title="Checkpoint dashboard API",
    version="1",
    description=(
        "Runs, checkpoints, jobs, exports and retention of the checkpoint dashboard. Authenticate with "
        "`Authorization: Bearer ckd_…` (a personal access token from the “API tokens” page or "
        "`manage.py createtoken`). Errors are RFC 9457 problem details; lists are cursor-paginated."
    ),
    urls_namespace="api-v1",
    auth=[BearerToken(), BrowserSession()],
    throttle=[ClientThrottle()],
)
for module in ROUTERS:
    api.add_router("/", module.router)


def _field(loc: list) -> str:
    # ("body", "body", "outputs", 0) -> "outputs[0]"; ("query", "limit") -> "limit"
    parts = [p for p in loc[1:] if p != "body"] or list(loc[-1:])
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [{"field": _field(list(e.get("loc", ()))), "message": e.get("msg", "invalid")} for e in exc.errors]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return problem_response(400, f"{first['field']}: {first['message']}", kind="validation",
                            title="Invalid request", errors=errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    detail = exc.message if exc.message != "Unauthorized" else (
        "Authentication required: send `Authorization: Bearer <token>` (or use a logged-in browser session).")
    return problem_response(401, detail, kind="unauthenticated", headers={"WWW-Authenticate": 'Bearer realm="api"'})


@api.exception_handler(Throttled)
def _throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
    return problem_response(429, "Too many requests from this client; slow down and retry after the time in "
                                 "Retry-After.", kind="throttled")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:  # the body is not JSON
        return problem_response(400, f"body: {exc.message}", kind="validation", title="Invalid request",
                                errors=[{"field": "body", "message": exc.message}])
    return problem_response(exc.status_code, exc.message)


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    scope = getattr(request.user, "api_scope", None)
    detail = str(exc) or "Your role does not allow this."
    if scope:
        detail += f" This token's scope is {scope}."
    return problem_response(403, detail, kind="forbidden")


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return problem_response(404, "There is no such object (it may have been deleted).", kind="not-found")


@api.exception_handler(ApiProblem)
def _problem(request: HttpRequest, exc: ApiProblem) -> HttpResponse:
    return from_problem(exc)


@api.exception_handler(Exception)
def _failed(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("API request failed: %s %s", request.method, request.path)
    return problem_response(500, "The server failed to answer this request; it has been logged.")


@csrf_exempt
def unknown_route(request: HttpRequest, rest: str = "") -> HttpResponse:
    return problem_response(404, f"There is no endpoint {request.method} /{PREFIX}{rest} in this API; see "
                                 f"/{PREFIX}docs.", kind="no-such-endpoint")


def _without_login_redirect(patterns: list) -> list:
    # The API answers 401 itself; the pages' login redirect must not turn that into a 302.
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _without_login_redirect(pattern.url_patterns)
        else:
            pattern.callback.login_required = False
    return patterns


def urlpatterns() -> list[URLPattern | URLResolver]:
    ninja_patterns, app_name, namespace = api.urls
    unknown = path(f"{PREFIX}<path:rest>", unknown_route, name="api-unknown")
    return _without_login_redirect([path(PREFIX, (ninja_patterns, app_name, namespace)), unknown])
