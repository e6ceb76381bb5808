"""Who may do what: the three roles and the one place object permissions are checked.

Roles are Django groups (created by a migration): viewers read and download, operators start
save/restore/freeze/scan/compare jobs, maintainers also prune, pin, make latest and edit retention.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from .models import Run

VIEWER, OPERATOR, MAINTAINER = "viewer", "operator", "maintainer"
ROLES = (VIEWER, OPERATOR, MAINTAINER)

VIEW = "dashboard.view_run"
OPERATE = "dashboard.operate_run"
MAINTAIN = "dashboard.maintain_run"



def require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied


def get_run_for_user(request: HttpRequest, name: str, perm: str = VIEW) -> Run:
    """Load a run by name and check the user holds ``perm``; 404 for an unknown run, 403 otherwise."""
    run = get_object_or_404(Run, name=name)
    require(request, perm)
    return run
