"""Registering and editing a webhook endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms

from .. import webhooks

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    from ..models import WebhookEndpoint


class WebhookEndpointForm(forms.Form):
    """The endpoint's URL, events, note and state; on creation also an optional secret.

    Every check is the operation's (``webhooks.endpoints``); the form only puts its errors on
    the right field.
    """

    url = forms.URLField(
        label="URL", max_length=2000, assume_scheme="https",
        widget=forms.URLInput(attrs={"placeholder": "https://ci.example.com/hooks/checkpoints"}),
        help_text="Receives a signed JSON POST for each event. Redirects are not followed.",
    )
    events = forms.MultipleChoiceField(
        choices=[(name, name) for name in webhooks.EVENTS], widget=forms.CheckboxSelectMultiple,
    )
    description = forms.CharField(max_length=200, required=False, help_text="What receives these, for people.")
    active = forms.BooleanField(required=False, initial=True, help_text="Disabled endpoints receive nothing.")
    secret = forms.CharField(
        max_length=200, required=False, widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to have a strong secret generated. It is shown once.",
    )

    def __init__(self, *args: Any, with_secret: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not with_secret:
            del self.fields["secret"]
        self.descriptions = webhooks.EVENTS

    def save(self, *, endpoint: WebhookEndpoint | None = None,
             user: AbstractBaseUser | AnonymousUser | None = None) -> tuple[WebhookEndpoint, str | None] | None:
        """Create (returns ``(endpoint, secret)``) or update ``endpoint`` (returns ``(endpoint, None)``);
        None when the operation refused a value (the error is then on its field)."""
        data = self.cleaned_data
        fields = {"url": data["url"], "events": data["events"], "description": data["description"],
                  "active": data["active"]}
        try:
            if endpoint is None:
                return webhooks.create_endpoint(**fields, secret=data.get("secret", ""), user=user)
            return webhooks.update_endpoint(endpoint, **fields, user=user), None
        except webhooks.InvalidEndpoint as exc:
            self.add_error(exc.field if exc.field in self.fields else None, str(exc))
            return None
