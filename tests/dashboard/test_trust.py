"""Marking a run's graphs trusted is a maintainer's audited decision."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dashboard.models import AuditEvent, Run

pytestmark = pytest.mark.django_db


def test_only_maintainers_can_trust_a_runs_graphs(client, viewer, operator, maintainer, demo_rows):
    url = reverse("run-trust", args=[demo_rows.name])
    for user in (viewer, operator):
        client.force_login(user)
        assert client.post(url, {"trusted": "1"}).status_code == 403
        assert "Trust graphs" not in client.get(demo_rows.get_absolute_url()).content.decode()
    assert not Run.objects.get(pk=demo_rows.pk).trusted

    client.force_login(maintainer)
    assert client.get(url).status_code == 405  # a change is a POST
    assert client.post(url, {"trusted": "1"}).status_code == 302
    assert Run.objects.get(pk=demo_rows.pk).trusted
    assert "trusted graphs" in client.get(demo_rows.get_absolute_url()).content.decode()
    client.post(url, {"trusted": "0"})
    assert not Run.objects.get(pk=demo_rows.pk).trusted
    actions = list(AuditEvent.objects.filter(run=demo_rows).order_by("at").values_list("action", "actor__username"))
    assert actions == [("trust", maintainer.username), ("distrust", maintainer.username)]
