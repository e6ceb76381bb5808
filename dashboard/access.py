"""Who may do what: the three roles and the one place object permissions are checked.

Roles are Django groups (created by a migration): viewers read and download, operators start
save/restore/freeze/scan/compare jobs, maintainers also prune, pin, make latest and edit retention.
Whatever may be done to a job (start, cancel, retry) needs the permission starting its kind needs:
retrying a prune deletes checkpoints, and canceling one stops it mid-delete.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from .models import Job, Run

VIEWER, OPERATOR, MAINTAINER = "viewer", "operator", "maintainer"
ROLES = (VIEWER, OPERATOR, MAINTAINER)

VIEW = "dashboard.view_run"
OPERATE = "dashboard.operate_run"
MAINTAIN = "dashboard.maintain_run"

# Every kind is listed: a new kind without a decision here fails loudly instead of defaulting.
JOB_PERMISSIONS = {
    Job.SCAN: OPERATE,
    Job.SAVE: OPERATE,
    Job.RESTORE: OPERATE,
    Job.FREEZE: OPERATE,
    Job.COMPARE: OPERATE,
    Job.PRUNE: MAINTAIN,
}

# What each role's group holds. Migration 0002 created the groups with this list; `ensure_roles`
# restores them (a test database flush, or an administrator deleting one, removes them).
ROLE_PERMISSIONS = {
    VIEWER: ["view_run", "view_checkpoint", "view_export", "view_job", "view_auditevent"],
    OPERATOR: ["view_run", "view_checkpoint", "view_export", "view_job", "view_auditevent", "operate_run"],
    MAINTAINER: [
        "view_run", "view_checkpoint", "view_export", "view_job", "view_auditevent",
        "operate_run", "maintain_run",
    ],
}


def ensure_roles() -> dict[str, Group]:
    """Create the role groups if missing and give each exactly its permissions."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

    # Permissions themselves are created after migrations; a flushed database may lack them.
    create_permissions(apps.get_app_config("dashboard"), verbosity=0)
    groups = {}
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(Permission.objects.filter(content_type__app_label="dashboard", codename__in=codenames))
        groups[role] = group
    return groups


def require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied


def get_run_for_user(
    request: HttpRequest, name: str, perm: str = VIEW, *, runs: QuerySet[Run] | None = None
) -> Run:
    """Load a run by name (from ``runs``, all runs by default) and check the user holds ``perm``;
    404 for an unknown run, 403 otherwise."""
    run = get_object_or_404(Run if runs is None else runs, name=name)
    require(request, perm)
    return run


def job_permission(kind: str) -> str:
    """The permission needed to start, cancel or retry a job of ``kind``."""
    try:
        return JOB_PERMISSIONS[kind]
    except KeyError:
        raise ValueError(f"no permission is decided for jobs of kind {kind!r}") from None


def may_handle_job(user: AbstractBaseUser | AnonymousUser | None, kind: str) -> bool:
    """Whether ``user`` may start, cancel or retry a job of ``kind`` (for showing buttons)."""
    return user is not None and user.has_perm(job_permission(kind))


def require_job_permission(user: AbstractBaseUser | AnonymousUser | None, kind: str) -> None:
    """Raise ``PermissionDenied`` unless ``user`` may start, cancel or retry a job of ``kind``."""
    if not may_handle_job(user, kind):
        raise PermissionDenied(f"Starting, canceling or retrying a {kind} job needs {job_permission(kind)}.")


# --- API token scopes ------------------------------------------------------------------------------
# A token's scope is one of the roles; what it may do is what that role may do AND what its user may
# do now (a user demoted after creating a token loses the power through the token too).

SCOPE_PERMISSION = {VIEWER: VIEW, OPERATOR: OPERATE, MAINTAINER: MAINTAIN}


def scopes_for(user: AbstractBaseUser) -> list[str]:
    """The token scopes ``user`` may create: none above their role."""
    return [scope for scope, perm in SCOPE_PERMISSION.items() if user.is_active and user.has_perm(perm)]


def limit_to_scope(user: AbstractBaseUser, scope: str) -> AbstractBaseUser:
    """``user`` with ``has_perm`` answering no for anything its ``scope``'s role does not hold.

    The same user object (it is still what jobs and audit events record as who asked), so every
    operation that asks ``user.has_perm`` (starting, canceling, retrying jobs) sees the limit: no
    code path can forget the scope. Superusers are limited too.
    """
    allowed = {f"dashboard.{codename}" for codename in ROLE_PERMISSIONS[scope]}
    own_has_perm = user.has_perm

    def has_perm(perm: str, obj: object = None) -> bool:
        return perm in allowed and own_has_perm(perm, obj)

    user.has_perm = has_perm  # type: ignore[method-assign]
    user.api_scope = scope  # type: ignore[attr-defined]
    return user
