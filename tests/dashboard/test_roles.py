"""Who may do what, checked on every route: anonymous users log in first; roles gate changes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from dashboard.models import Checkpoint, Export, Job, Run

pytestmark = pytest.mark.django_db


def _routes(patterns=None, prefix=""):
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            if "admin" in str(entry.pattern):
                continue  # Django's admin has its own staff login
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern) and entry.name and not str(entry.pattern).startswith("admin"):
            yield entry.name, prefix + str(entry.pattern)


@pytest.fixture
def objects(checkpoint_root):
    (checkpoint_root / "r").mkdir()
    run = Run.objects.create(name="r", directory=str(checkpoint_root / "r"))
    ckpt = Checkpoint.objects.create(run=run, prefix="model.ckpt-1", step=1, saved_at=dt.datetime.now(dt.UTC))
    export = Export.objects.create(checkpoint=ckpt, path="/nowhere.pb", sha256="0" * 64)
    job = Job.objects.create(kind=Job.SCAN, run=run)
    return {"name": run.name, "pk": ckpt.pk, "export": export.pk, "job": job.pk}


def _url(name: str, pattern: str, objects) -> str | None:
    kwargs = {}
    if "<slug:name>" in pattern:
        kwargs["name"] = objects["name"]
    if "<int:pk>" in pattern:
        kwargs["pk"] = (
            objects["export"] if name.startswith("export") else objects["job"]
            if name.startswith(("job", "compare-status")) else objects["pk"]
        )
    return reverse(name, kwargs=kwargs)


def test_anonymous_users_are_sent_to_the_login_page_everywhere(client, objects):
    checked = 0
    for name, pattern in _routes():
        if name in ("login", "logout"):
            continue
        url = _url(name, pattern, objects)
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code == 302, (name, url, response.status_code)
            assert response["Location"].startswith(reverse("login")), (name, url)
        checked += 1
    assert checked >= 30


# Changes each role may (True) or may not (False) make, by route name.
CHANGES = {
    "run-scan": ("operator", "maintainer"),
    "checkpoint-verify": ("operator", "maintainer"),
    "checkpoint-freeze": ("operator", "maintainer"),
    "run-save": ("operator", "maintainer"),
    "run-prune-now": ("maintainer",),
    "run-retention": ("maintainer",),
    "checkpoint-pin": ("maintainer",),
    "checkpoint-make-latest": ("maintainer",),
    "run-trust": ("maintainer",),
}


@pytest.mark.parametrize("role", ["viewer", "operator", "maintainer"])
def test_each_role_is_refused_exactly_the_changes_it_may_not_make(client, objects, role, request):
    user = request.getfixturevalue(role)
    client.force_login(user)
    patterns = dict(_routes())
    for name, allowed in CHANGES.items():
        response = client.post(_url(name, patterns[name], objects), {})
        if role in allowed:
            assert response.status_code != 403, (role, name)
        else:
            assert response.status_code == 403, (role, name, response.status_code)
    page = client.get(reverse("run", args=[objects["name"]])).content.decode()
    assert ("Scan now" in page) is (role != "viewer")
    assert ("Retention" in page) is (role == "maintainer")
    checkpoint_page = client.get(reverse("checkpoint", args=[objects["name"], objects["pk"]])).content.decode()
    assert ("Freeze…" in checkpoint_page) is (role != "viewer")
    assert ("Make latest" in checkpoint_page) is (role == "maintainer")
