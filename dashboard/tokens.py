"""Personal access tokens: create one (shown once), check one on use, revoke one.

A token is ``ckd_`` followed by 40 random URL-safe characters. Only its sha256 is stored, with the
first characters (``lookup``) so that lists can show which token is which. Creating and revoking
are audited, and so is every use of a maintainer-scope token (it can prune and pin).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from . import access
from .models import ApiToken, AuditEvent
from .models.token import hash_secret

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

LOOKUP_CHARS = 12  # "ckd_" + 8 characters of the secret
MAX_EXPIRY_DAYS = 3650
LAST_USED_PRECISION = dt.timedelta(minutes=1)


class TokenRefused(Exception):
    """The presented token cannot be used; the message says why (no secret in it)."""


def create_token(user: AbstractBaseUser, scope: str, name: str, *, expires_days: int | None = None,
                 actor: AbstractBaseUser | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret, which is never available again.

    Raises ``PermissionDenied`` when ``scope`` is above the user's role and ``ValueError`` for a
    bad name, scope or expiry.
    """
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValueError("Give the token a name of 1 to 100 characters (what uses it, e.g. “deploy pipeline”).")
    if scope not in access.SCOPE_PERMISSION:
        raise ValueError(f"Unknown scope {scope!r}: one of {', '.join(access.SCOPE_PERMISSION)}.")
    if scope not in access.scopes_for(user):
        raise PermissionDenied(f"{user.get_username()} may not create a {scope} token: it would exceed their role.")
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
        raise ValueError(f"Expiry must be between 1 and {MAX_EXPIRY_DAYS} days.")
    secret = ApiToken.PREFIX + secrets.token_urlsafe(30)
    now = timezone.now()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, scope=scope, lookup=secret[:LOOKUP_CHARS], digest=hash_secret(secret),
            created_at=now, expires_at=now + dt.timedelta(days=expires_days) if expires_days else None,
        )
        AuditEvent.record("token_created", f"API token “{name}” ({token.lookup}…, {scope}) for {user.get_username()}",
                          actor=actor or user, details={"token": token.pk, "scope": scope})
    return token, secret


def revoke_token(token: ApiToken, *, actor: AbstractBaseUser) -> bool:
    """Revoke ``token`` (its owner or a superuser); False when it was revoked already."""
    if actor.pk != token.user_id and not actor.is_superuser:
        raise PermissionDenied("Only the token's owner may revoke it.")
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(revoked_at=timezone.now())
    if revoked:
        AuditEvent.record("token_revoked", f"API token “{token.name}” ({token.lookup}…) revoked", actor=actor,
                          details={"token": token.pk})
    token.refresh_from_db()
    return bool(revoked)


def authenticate(secret: str, *, method: str = "", path: str = "") -> ApiToken:
    """The active token for ``secret``, its user limited to its scope (``token.user``).

    Raises ``TokenRefused`` for an unknown, revoked or expired token, or an inactive user. Notes the
    use (``last_used_at``) and audits it for a maintainer-scope token.
    """
    if not secret.startswith(ApiToken.PREFIX):
        raise TokenRefused("This is not an API token (they start with “ckd_”).")
    token = ApiToken.objects.select_related("user").filter(digest=hash_secret(secret)).first()
    if token is None:
        raise TokenRefused("Unknown API token.")
    if token.revoked_at is not None:
        raise TokenRefused(f"The API token “{token.name}” was revoked.")
    if token.is_expired:
        raise TokenRefused(f"The API token “{token.name}” expired on {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    if not token.user.is_active:
        raise TokenRefused("The API token's user is deactivated.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
        # To the minute: a pipeline polling a job every second would otherwise write once a second.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    if token.scope == ApiToken.MAINTAINER:
        AuditEvent.record("token_used", f"Maintainer token “{token.name}” ({token.lookup}…): {method} {path}"[:500],
                          actor=token.user, details={"token": token.pk, "method": method, "path": path[:300]})
    access.limit_to_scope(token.user, token.scope)
    return token
