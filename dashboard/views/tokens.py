"""The "API tokens" page: create a token (its secret shown once), list yours, revoke one."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import access, tokens
from dashboard.models import ApiToken


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “deploy pipeline”.")
    scope = forms.ChoiceField(help_text="What the token may do; never more than your role.")
    expires_days = forms.IntegerField(required=False, min_value=1, max_value=tokens.MAX_EXPIRY_DAYS, initial=90,
                                      label="Expires after (days)", help_text="Empty: never.")

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["scope"].choices = [(s, s) for s in access.scopes_for(user)]


def token_list(request: HttpRequest) -> HttpResponse:
    access.require(request, access.VIEW)
    form = TokenForm(request.POST or None, user=request.user)
    secret = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            token, secret = tokens.create_token(request.user, data["scope"], data["name"],
                                                expires_days=data["expires_days"])
        except (ValueError, PermissionDenied) as exc:
            form.add_error(None, str(exc))
        else:
            form = TokenForm(user=request.user)
            messages.success(request, f"Token “{token.name}” created. Copy it now: it is not shown again.")
    rows = ApiToken.objects.filter(user=request.user).order_by("revoked_at", "-created_at")
    # The secret is rendered in this response only (never stored, never in a redirect's URL).
    response = render(request, "dashboard/tokens.html", {"form": form, "tokens": rows, "secret": secret})
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    access.require(request, access.VIEW)
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if tokens.revoke_token(token, actor=request.user):
        messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    else:
        messages.info(request, f"Token “{token.name}” was already revoked.")
    return redirect("tokens")
