from django.http import HttpRequest

from . import access


def permissions(request: HttpRequest) -> dict:
    """Role flags for templates, so buttons a user cannot use are not shown."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"can_operate": False, "can_maintain": False}
    return {"can_operate": user.has_perm(access.OPERATE), "can_maintain": user.has_perm(access.MAINTAIN)}
