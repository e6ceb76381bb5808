"""Serving targets: publish verified SavedModel exports as versions labelled by the run's aliases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.urls import reverse
from google.protobuf import text_format

from dashboard import aliases, artifacts, serving
from dashboard.models import AuditEvent, Export, ServingTarget
from tests.dashboard import test_freeze_verify_commands as commands

pytestmark = [pytest.mark.tf, pytest.mark.django_db]

demo_template, demo = commands.demo_template, commands.demo


def _config(target: ServingTarget):
    from tensorflow_serving.config import model_server_config_pb2

    text = (Path(target.base_path) / "models.config").read_text()
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {m.name: m for m in parsed.model_config_list.config}[target.model_name]


def test_publish_labels_by_alias_and_prunes_only_unlabelled_old_versions(client, maintainer, demo, settings):
    client.force_login(maintainer)
    first, second = demo.checkpoints.get(step=25), demo.checkpoints.get(step=50)
    exports = [artifacts.freeze(c, outputs=["probs"], kind=Export.SAVED_MODEL) for c in (first, second)]
    assert all(e.verified for e in exports)

    response = client.post(reverse("serving-new", args=["demo"]), {"model_name": "antispam", "base_path": "",
                                                                   "keep_newest": "1"})
    target = ServingTarget.objects.get()
    assert response["Location"] == target.get_absolute_url()
    assert target.base_path == str(settings.SERVING_ROOT)
    for export in exports:
        client.post(reverse("serving-publish", args=[target.pk]), {"export": export.pk})
    assert sorted(os.listdir(target.model_path)) == ["25", "50"]
    assert AuditEvent.objects.filter(action="publish").count() == 2

    # The alias becomes a label of the version of its step; moving it moves the label.
    aliases.set_alias(demo, "prod", first, actor=maintainer)
    assert dict(_config(target).version_labels) == {"prod": 25}
    assert list(_config(target).model_version_policy.specific.versions) == [25, 50]

    page = client.get(target.get_absolute_url()).content.decode()
    assert "kept: label prod" in page and "kept: newest 1" in page

    # Keep the newest 1 and the labelled: nothing goes. Move prod to 50: 25 is then removable.
    assert [d.version for d in serving.plan_versions(target) if not d.keep] == []
    aliases.set_alias(demo, "prod", second, actor=maintainer)
    assert dict(_config(target).version_labels) == {"prod": 50}
    doomed = [d.version for d in serving.plan_versions(target) if not d.keep]
    assert doomed == [25]
    client.post(reverse("serving-prune", args=[target.pk]), {"version": ["25"]})
    assert sorted(os.listdir(target.model_path)) == ["50"]
    assert list(_config(target).model_version_policy.specific.versions) == [50]


def test_only_verified_saved_models_of_the_run_are_published(maintainer, demo):
    checkpoint = demo.checkpoints.get(step=50)
    target = serving.create_target(demo, "antispam", actor=maintainer)
    frozen = artifacts.freeze(checkpoint, outputs=["probs"])
    with pytest.raises(ValueError, match="only a SavedModel export"):
        serving.publish(target, frozen)
    saved = artifacts.freeze(checkpoint, outputs=["probs"], kind=Export.SAVED_MODEL)
    Export.objects.filter(pk=saved.pk).update(verified=False)
    saved.refresh_from_db()
    with pytest.raises(ValueError, match="not verified"):
        serving.publish(target, saved)
    assert not target.model_path.exists() or os.listdir(target.model_path) == []


def test_a_base_path_outside_the_serving_root_is_refused(client, maintainer, demo, tmp_path):
    client.force_login(maintainer)
    page = client.post(reverse("serving-new", args=["demo"]),
                       {"model_name": "antispam", "base_path": str(tmp_path.parent), "keep_newest": "3"})
    assert page.status_code == 200 and "serving base path refused" in page.content.decode()
    assert not ServingTarget.objects.exists()


def test_operators_cannot_create_publish_or_prune(client, operator, maintainer, demo):
    target = serving.create_target(demo, "antispam", actor=maintainer)
    client.force_login(operator)
    assert client.get(reverse("serving-new", args=["demo"])).status_code == 403
    assert client.post(reverse("serving-publish", args=[target.pk]), {"export": 1}).status_code == 403
    assert client.post(reverse("serving-prune", args=[target.pk]), {}).status_code == 403
    assert client.get(target.get_absolute_url()).status_code == 200
