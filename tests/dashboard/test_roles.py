"""Who may do what, checked on every route of the URL conf for every role, with GET and POST.

The routes are walked from ``dashboard.urls`` itself and each one must have an entry in
``EXPECTED``: a route added without a decision about who may use it fails here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from dashboard import jobs
from dashboard.models import (
    ApiToken,
    Checkpoint,
    Export,
    Job,
    Run,
    ServingTarget,
    WebhookDelivery,
    WebhookEndpoint,
)

pytestmark = pytest.mark.django_db

ANONYMOUS, VIEWER, OPERATOR, MAINTAINER = "anonymous", "viewer", "operator", "maintainer"
ROLES = (ANONYMOUS, VIEWER, OPERATOR, MAINTAINER)
KINDS = [kind for kind, _ in Job.KIND_CHOICES]


@dataclass(frozen=True)
class Expect:
    """Statuses for (anonymous, viewer, operator, maintainer), for GET and for an empty POST.

    ``pk`` names the fixture object that fills an ``<int:pk>`` converter: ``checkpoint``,
    ``export``, ``running job`` or ``failed job`` (then of ``kind``).
    """

    get: tuple[int, int, int, int]
    post: tuple[int, int, int, int]
    pk: str | None = None
    kind: str | None = None

    def status(self, method: str, role: str) -> int:
        return (self.get if method == "GET" else self.post)[ROLES.index(role)]

    def on(self, pk: str, kind: str | None = None) -> Expect:
        return Expect(self.get, self.post, pk, kind)


LOGIN = 302  # anonymous users are sent to the login page everywhere
# A page that changes nothing; a POST to it renders it again.
READ = Expect(get=(LOGIN, 200, 200, 200), post=(LOGIN, 200, 200, 200))
# What a page's script polls: GET only.
POLL = Expect(get=(LOGIN, 200, 200, 200), post=(LOGIN, 405, 405, 405))
# A form that starts a job or registers a run: GET shows it, an empty POST shows it with errors.
OPERATE_FORM = Expect(get=(LOGIN, 403, 200, 200), post=(LOGIN, 403, 200, 200))
# POST-only actions.
OPERATE_ACTION = Expect(get=(LOGIN, 405, 405, 405), post=(LOGIN, 403, 302, 302))
MAINTAIN_ACTION = Expect(get=(LOGIN, 405, 405, 405), post=(LOGIN, 403, 403, 302))
# Pages only maintainers see at all; an empty POST to a form shows it again with its errors.
MAINTAIN_PAGE = Expect(get=(LOGIN, 403, 403, 200), post=(LOGIN, 403, 403, 200))
# Everyone reads the policy; only maintainers change it.
MAINTAIN_FORM = Expect(get=(LOGIN, 200, 200, 200), post=(LOGIN, 403, 403, 200))
# Whatever may be done to a job needs what starting its kind needs: pruning deletes checkpoints.
JOB_ACTION = {
    Job.SCAN: OPERATE_ACTION,
    Job.SAVE: OPERATE_ACTION,
    Job.RESTORE: OPERATE_ACTION,
    Job.FREEZE: OPERATE_ACTION,
    Job.COMPARE: OPERATE_ACTION,
    Job.PRUNE: MAINTAIN_ACTION,
}


def _every_kind(expect: Expect, pk: str) -> tuple[Expect, ...]:
    return tuple(expect.on(pk, kind) for kind in KINDS)


def _job_action(pk: str) -> tuple[Expect, ...]:
    assert set(JOB_ACTION) == set(KINDS), "decide who may act on jobs of every kind"
    return tuple(JOB_ACTION[kind].on(pk, kind) for kind in KINDS)


# One entry per URL name; each case is one request target (a job route is tried on every kind).
EXPECTED: dict[str, tuple[Expect, ...]] = {
    "runs": (READ,),
    "run-new": (OPERATE_FORM,),
    "run": (READ,),
    "run-chart": (READ,),
    "run-changes": (POLL,),
    "run-live": (POLL,),
    "run-scan": (OPERATE_ACTION,),
    "run-trust": (MAINTAIN_ACTION,),
    "checkpoint": (READ.on("checkpoint"),),
    "checkpoint-verify": (OPERATE_ACTION.on("checkpoint"),),
    "checkpoint-freeze": (OPERATE_FORM.on("checkpoint"),),
    "checkpoint-partial-restore": (OPERATE_FORM.on("checkpoint"),),
    "checkpoint-make-latest": (MAINTAIN_ACTION.on("checkpoint"),),
    "checkpoint-exports": (READ.on("checkpoint"),),
    "exports": (READ,),
    "export": (READ.on("export"),),
    "export-download": (READ.on("export"),),  # viewers download
    "export-recheck": (OPERATE_ACTION.on("export"),),  # hashing a changed export again
    "run-save": (OPERATE_FORM,),
    "checkpoint-resave": (OPERATE_FORM.on("checkpoint"),),
    "run-steps": (READ,),
    "run-steps-start": (OPERATE_ACTION,),
    "compare": (READ,),
    "compare-start": (OPERATE_ACTION,),
    "compare-status": (READ.on("running job", Job.COMPARE),),
    "run-retention": (MAINTAIN_FORM,),
    "run-prune": (READ,),  # the preview; deleting is run-prune-now
    "run-prune-now": (MAINTAIN_ACTION,),
    "run-trash-restore": (MAINTAIN_ACTION,),  # moves a prune's files back into the run
    "checkpoint-pin": (MAINTAIN_ACTION.on("checkpoint"),),
    "checkpoint-alias": (MAINTAIN_ACTION.on("checkpoint"),),
    "run-aliases": (READ,),
    "alias-remove": (MAINTAIN_ACTION,),
    # Publishing to TF Serving writes outside the export directory: maintainers only.
    "serving-new": (Expect(get=(LOGIN, 403, 403, 200), post=(LOGIN, 403, 403, 200)),),
    "serving": (READ,),
    "serving-target": (READ.on("serving"),),
    "serving-publish": (MAINTAIN_ACTION.on("serving"),),
    "serving-prune": (MAINTAIN_ACTION.on("serving"),),
    # Webhook endpoints hold a secret and send the dashboard's events off the machine: maintainers only.
    "webhooks": (MAINTAIN_PAGE,),
    "webhook-new": (MAINTAIN_PAGE,),
    "webhook": (MAINTAIN_PAGE.on("webhook"),),
    "webhook-edit": (MAINTAIN_PAGE.on("webhook"),),
    "webhook-secret": (Expect(get=(LOGIN, 405, 405, 405), post=(LOGIN, 403, 403, 200)).on("webhook"),),
    "webhook-delete": (MAINTAIN_ACTION.on("webhook"),),
    "webhook-ping": (MAINTAIN_ACTION.on("webhook"),),
    "webhook-redeliver": (MAINTAIN_ACTION.on("webhook"),),
    "audit": (READ,),
    "jobs": (READ,),
    "job": _every_kind(READ, "running job"),
    "job-progress": _every_kind(READ, "running job"),
    "job-cancel": _job_action("running job"),
    "job-retry": _job_action("failed job"),
    # Signing in is open to everyone; an empty form is shown again with its errors.
    # Anyone's own tokens; revoking someone else's token is not found, whatever the role.
    "tokens": (READ,),
    "token-revoke": (Expect(get=(LOGIN, 405, 405, 405), post=(LOGIN, 404, 404, 404), pk="token"),),
    # The REST API answers unknown routes under it with a 404 problem, signed in or not.
    "api-unknown": (Expect(get=(404, 404, 404, 404), post=(404, 404, 404, 404)),),
    "login": (Expect(get=(200, 200, 200, 200), post=(200, 200, 200, 200)),),
    "logout": (Expect(get=(LOGIN, 405, 405, 405), post=(LOGIN, 302, 302, 302)),),
    # Browsers ask for it before anyone logs in: a redirect to the static file, for everyone.
    "favicon": (Expect(get=(301, 301, 301, 301), post=(405, 405, 405, 405)),),
}

# Included URL confs with a login of their own: only staff get in (asserted below).
STAFF_ONLY_INCLUDES = ("admin/django-rq/", "admin/")
# The REST API decides per endpoint and token scope: tests/api/test_scopes.py walks every endpoint.
API_INCLUDES = ("api/v1/",)


def _patterns() -> Iterator[tuple[str, URLPattern | URLResolver]]:
    for entry in get_resolver().url_patterns:
        yield str(entry.pattern), entry


@pytest.fixture
def objects(checkpoint_root) -> dict:
    (checkpoint_root / "r").mkdir()
    run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"))
    ckpt = Checkpoint.objects.create(run=run, prefix="model.ckpt-1", step=1, saved_at=dt.datetime.now(dt.UTC))
    settings.EXPORT_ROOT.mkdir(parents=True, exist_ok=True)
    pb = settings.EXPORT_ROOT / "model.pb"
    pb.write_bytes(b"frozen graph")
    export = Export.objects.create(
        checkpoint=ckpt, path=str(pb), size_bytes=pb.stat().st_size, sha256=hashlib.sha256(b"frozen graph").hexdigest()
    )
    serving = ServingTarget.objects.create(run=run, model_name="m", base_path=str(settings.SERVING_ROOT))
    owner = User.objects.create_user("tom-token-owner")
    token = ApiToken.objects.create(user=owner, name="someone's", scope="viewer", lookup="ckd_x", digest="0" * 64)
    return {"run": run, "checkpoint": ckpt, "export": export, "serving": serving, "token": token}


@pytest.fixture
def empty_queue():
    yield
    # Allowed POSTs start real jobs; nothing in this module runs them, so drop them.
    jobs.get_queue().empty()


def _url(name: str, entry: URLPattern, case: Expect, objects: dict) -> str:
    kwargs = {}
    for converter in entry.pattern.converters:
        if converter == "name":
            kwargs["name"] = objects["run"].name
        elif converter == "alias":
            kwargs["alias"] = "prod"
        elif converter == "pk" and case.pk == "webhook":
            # A fresh endpoint per request target: one route's POST (a delete) must not change another's.
            endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/in", secret="s" * 32,
                                                      events=["job.failed"])
            kwargs["pk"] = endpoint.pk
            if "delivery_pk" in entry.pattern.converters:
                kwargs["delivery_pk"] = WebhookDelivery.objects.create(
                    endpoint=endpoint, event="job.failed", event_id="evt-roles", payload={}, state="failed").pk
        elif converter == "delivery_pk":
            continue  # filled with its endpoint above
        elif converter == "batch":
            kwargs["batch"] = "prune-1"
        elif converter == "rest":
            kwargs["rest"] = "no/such/endpoint"
        elif converter == "pk" and case.pk in ("checkpoint", "export", "serving", "token"):
            kwargs["pk"] = objects[case.pk].pk
        elif converter == "pk" and case.pk in ("running job", "failed job"):
            # A fresh job per request target: one route's POST (a cancel) must not change another's.
            status = Job.RUNNING if case.pk == "running job" else Job.FAILED
            job = Job.objects.create(
                kind=case.kind, run=objects["run"], checkpoint=objects["checkpoint"], status=status
            )
            kwargs["pk"] = job.pk
        else:
            raise AssertionError(f"{name}: no fixture object for <{converter}> (pk={case.pk!r}); add one")
    return reverse(name, kwargs=kwargs)


def _login(client, role: str, request) -> None:
    client.logout()
    if role != ANONYMOUS:
        client.force_login(request.getfixturevalue(role))


def test_every_route_has_a_permission_decision():
    named = set()
    for pattern, entry in _patterns():
        if isinstance(entry, URLResolver):
            assert pattern in STAFF_ONLY_INCLUDES + API_INCLUDES, f"included URL conf {pattern!r} has no permission decision"
            continue
        assert entry.name, f"route {pattern!r} has no name, so it cannot have an entry in EXPECTED"
        named.add(entry.name)
    assert named - set(EXPECTED) == set(), "routes without an entry in EXPECTED"
    assert set(EXPECTED) - named == set(), "EXPECTED lists routes that no longer exist"


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_each_role_as_decided(client, objects, role, request, empty_queue):
    _login(client, role, request)
    checked = 0
    wrong = []
    for _, entry in _patterns():
        if isinstance(entry, URLResolver):
            continue
        for case in EXPECTED[entry.name]:
            url = _url(entry.name, entry, case, objects)
            for method in ("GET", "POST"):
                response = client.get(url) if method == "GET" else client.post(url, {})
                expected = case.status(method, role)
                if response.status_code != expected:
                    wrong.append((entry.name, case.kind, method, expected, response.status_code))
                elif role == ANONYMOUS and expected == LOGIN:
                    assert response["Location"].startswith(reverse("login")), (entry.name, url)
                checked += 1
    assert wrong == [], f"{role}: (route, kind, method, expected, got) {wrong}"
    assert checked == 2 * sum(len(cases) for cases in EXPECTED.values()) >= 100


@pytest.mark.parametrize("role", ROLES)
def test_included_admin_sites_need_staff(client, role, request):
    _login(client, role, request)
    for prefix in STAFF_ONLY_INCLUDES:
        for method in (client.get, client.post):
            response = method("/" + prefix)
            assert response.status_code == 302, (role, prefix)
            assert response["Location"].startswith("/admin/login/"), (role, prefix, response["Location"])
    staff = User.objects.create_user("stella-staff", is_staff=True, is_superuser=True)
    client.force_login(staff)
    for prefix in STAFF_ONLY_INCLUDES:
        assert client.get("/" + prefix).status_code == 200, prefix


@pytest.mark.parametrize("role", [VIEWER, OPERATOR, MAINTAINER])
def test_pages_show_only_the_buttons_a_role_may_use(client, objects, role, request):
    client.force_login(request.getfixturevalue(role))
    name, pk = objects["run"].name, objects["checkpoint"].pk
    page = client.get(reverse("run", args=[name])).content.decode()
    assert ("Scan now" in page) is (role != VIEWER)
    assert ("Retention" in page) is (role == MAINTAINER)
    checkpoint_page = client.get(reverse("checkpoint", args=[name, pk])).content.decode()
    assert ("Freeze / export…" in checkpoint_page) is (role != VIEWER)
    assert ("Set alias" in checkpoint_page) is (role == MAINTAINER)
    assert ("Publish to TF Serving" in page) is (role == MAINTAINER)
    assert ("Make latest" in checkpoint_page) is (role == MAINTAINER)
    for kind in KINDS:
        running = Job.objects.create(kind=kind, run=objects["run"], status=Job.RUNNING)
        failed = Job.objects.create(kind=kind, run=objects["run"], status=Job.FAILED)
        may = role == MAINTAINER or (role == OPERATOR and kind != Job.PRUNE)
        assert ("Cancel job" in client.get(running.get_absolute_url()).content.decode()) is may, (role, kind)
        assert (reverse("job-retry", args=[failed.pk]) in client.get(failed.get_absolute_url()).content.decode()) is may
