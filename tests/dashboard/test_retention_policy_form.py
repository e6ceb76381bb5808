"""A run's retention policy: edited by maintainers on its retention page, validated inline, audited,
and defaulted from settings for new runs."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from dashboard.models import AuditEvent, Run
from dashboard.settings import _env_retention

pytestmark = pytest.mark.django_db

VALID = {
    "max_to_keep": "5", "keep_checkpoint_every_n_hours": "0.5", "keep_every_n_steps": "", "keep_best_n": "3",
    "best_metric": "accuracy", "best_mode": "max", "min_age_seconds": "900", "protect_exported": "on",
}


@pytest.fixture
def run(checkpoint_root) -> Run:
    (checkpoint_root / "r").mkdir()
    return Run.objects.create(name="r", directory=str(checkpoint_root / "r"))


def test_maintainer_saves_a_policy_and_the_change_is_audited(client, maintainer, run):
    client.force_login(maintainer)
    response = client.post(reverse("run-retention", args=["r"]), VALID)

    assert response.status_code == 302 and response["Location"] == reverse("run-prune", args=["r"])
    run.refresh_from_db()
    assert (run.max_to_keep, run.keep_checkpoint_every_n_hours, run.keep_every_n_steps) == (5, 0.5, None)
    assert (run.keep_best_n, run.best_metric, run.best_mode, run.min_age_seconds) == (3, "accuracy", "max", 900)
    assert run.protect_exported and not run.auto_prune
    event = AuditEvent.objects.get(action="retention_policy")
    assert event.actor == maintainer and event.run == run
    assert event.details["changes"]["max_to_keep"] == [None, 5]
    assert "protect_exported" not in event.details["changes"]  # unchanged fields are not listed
    assert "max_to_keep — → 5" in event.summary

    client.post(reverse("run-retention", args=["r"]), VALID)  # the same again: nothing to audit
    assert AuditEvent.objects.filter(action="retention_policy").count() == 1


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"max_to_keep": "-1"}, "max_to_keep", "greater than or equal to 0"),
        ({"max_to_keep": "many"}, "max_to_keep", "Enter a whole number"),
        ({"keep_checkpoint_every_n_hours": "nan"}, "keep_checkpoint_every_n_hours", "Enter a number"),
        ({"keep_checkpoint_every_n_hours": "2", "max_to_keep": ""}, "keep_checkpoint_every_n_hours",
         "Set “Keep the newest” too"),
        ({"keep_every_n_steps": "0"}, "keep_every_n_steps", "greater than or equal to 1"),
        ({"keep_best_n": "2", "best_metric": "  "}, "best_metric", "Name the metric"),
        ({"best_mode": "median"}, "best_mode", "Select a valid choice"),
        ({"min_age_seconds": ""}, "min_age_seconds", "This field is required"),
        ({"max_to_keep": str(2**40)}, "max_to_keep", "less than or equal to"),
    ],
)
def test_bad_input_is_an_inline_error_and_nothing_is_saved(client, maintainer, run, changes, field, message):
    client.force_login(maintainer)
    response = client.post(reverse("run-retention", args=["r"]), {**VALID, **changes})

    assert response.status_code == 200
    form = response.context["form"]
    assert any(message in error for error in form.errors[field]), form.errors
    assert f'id="field-{field}"' in response.content.decode() and 'class="error" role="alert"' in response.content.decode()
    run.refresh_from_db()
    assert run.max_to_keep is None and not AuditEvent.objects.exists()


def test_viewers_read_the_policy_but_cannot_change_it(client, viewer, operator, run):
    client.force_login(viewer)
    html = client.get(reverse("run-retention", args=["r"])).content.decode()
    assert "<fieldset disabled>" in html and "Save policy" not in html
    for user in (viewer, operator):
        client.force_login(user)
        assert client.post(reverse("run-retention", args=["r"]), VALID).status_code == 403
    run.refresh_from_db()
    assert run.max_to_keep is None


def test_run_page_links_to_retention_for_maintainers_only(client, viewer, maintainer, run):
    link = reverse("run-retention", args=["r"])
    client.force_login(viewer)
    assert link not in client.get(reverse("run", args=["r"])).content.decode()
    client.force_login(maintainer)
    assert link in client.get(reverse("run", args=["r"])).content.decode()


def test_metric_names_are_suggested(client, maintainer, run):
    from tests.dashboard.conftest import add_checkpoint_rows

    add_checkpoint_rows(run, 3)
    client.force_login(maintainer)
    html = client.get(reverse("run-retention", args=["r"])).content.decode()
    assert '<datalist id="metric-names"><option value="loss">' in html


def test_new_runs_get_the_default_policy_from_settings(settings, checkpoint_root, client, operator):
    settings.DEFAULT_RETENTION = {**settings.DEFAULT_RETENTION, "max_to_keep": 7, "keep_checkpoint_every_n_hours": 2.0,
                                  "min_age_seconds": 300, "auto_prune": True}
    (checkpoint_root / "a").mkdir()
    (checkpoint_root / "b").mkdir()
    plain = Run.objects.create(name="a", directory=str(checkpoint_root / "a"))
    assert (plain.max_to_keep, plain.keep_checkpoint_every_n_hours, plain.min_age_seconds, plain.auto_prune) == (
        7, 2.0, 300, True)
    own = Run.objects.create(name="b", directory=str(checkpoint_root / "b"), max_to_keep=2)
    assert own.max_to_keep == 2  # what the caller chose stays

    # Registering a directory on the page is a new run too; saving it later changes nothing.
    (checkpoint_root / "c").mkdir()
    client.force_login(operator)
    client.post(reverse("run-new"), {"name": "c", "directory": str(checkpoint_root / "c")})
    registered = Run.objects.get(name="c")
    assert registered.max_to_keep == 7
    settings.DEFAULT_RETENTION = {**settings.DEFAULT_RETENTION, "max_to_keep": 1}
    registered.save()
    assert Run.objects.get(name="c").max_to_keep == 7


def test_default_retention_setting_is_checked_at_start_up(monkeypatch):
    monkeypatch.setenv("DEFAULT_RETENTION", '{"max_to_keep": 3, "keep_checkpoint_every_n_hours": 0.5}')
    assert _env_retention("DEFAULT_RETENTION")["keep_checkpoint_every_n_hours"] == 0.5
    for bad, says in [
        ("{max_to_keep: 3}", "must be a JSON object"),
        ("[3]", "must be a JSON object"),
        ('{"max_to_kep": 3}', "unknown keys max_to_kep"),
        ('{"max_to_keep": -3}', "max_to_keep cannot be negative"),
        ('{"keep_best_n": 2}', "keep_best_n needs best_metric"),
        ('{"min_age_seconds": 1.5}', "whole number of seconds"),
    ]:
        monkeypatch.setenv("DEFAULT_RETENTION", bad)
        with pytest.raises(ImproperlyConfigured, match=says):
            _env_retention("DEFAULT_RETENTION")
