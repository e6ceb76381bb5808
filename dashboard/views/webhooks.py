"""Webhook endpoints and their delivery logs (maintainers only)."""

from __future__ import annotations

import json

from django.contrib import messages
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from dashboard import access, webhooks
from dashboard.forms import WebhookEndpointForm
from dashboard.models import WebhookDelivery, WebhookEndpoint
from dashboard.views.paging import INT, Order, count_at_most, paginate

DELIVERIES_PAGE_SIZE = 25
DELIVERIES_COUNT_CAP = 10_000
# Ids follow creation (a redelivery is a new row): newest first is highest id first, read from the
# (endpoint, id) index, or (endpoint, state, id) when filtered by state; the API pages the same way.
NEWEST_FIRST = Order("-id", ("id",), (INT,), descending=True)


def _endpoint_for_maintainer(request: HttpRequest, pk: int) -> WebhookEndpoint:
    access.require(request, access.MAINTAIN)
    return get_object_or_404(WebhookEndpoint, pk=pk)


def _show_secret(request: HttpRequest, endpoint: WebhookEndpoint, secret: str, *, new: bool) -> HttpResponse:
    # Rendered in the answer to the POST, never redirected to: a secret must not sit in a URL or a
    # message cookie. The views that call this are ``never_cache`` (no-store): nor in a cache.
    return render(request, "dashboard/webhook_secret.html", {"endpoint": endpoint, "secret": secret, "new": new})


def webhook_list(request: HttpRequest) -> HttpResponse:
    access.require(request, access.MAINTAIN)
    endpoints = WebhookEndpoint.objects.annotate(
        delivery_count=Count("deliveries"),
        failed_count=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.FAILED)),
        pending_count=Count("deliveries", filter=Q(deliveries__state__in=[WebhookDelivery.PENDING,
                                                                           WebhookDelivery.SENDING])),
        last_delivery=Max("deliveries__created_at"),
    )
    return render(request, "dashboard/webhook_list.html", {"endpoints": endpoints, "events": webhooks.EVENTS})


@never_cache
def webhook_new(request: HttpRequest) -> HttpResponse:
    access.require(request, access.MAINTAIN)
    form = WebhookEndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        saved = form.save(user=request.user)
        if saved is not None:
            endpoint, secret = saved
            return _show_secret(request, endpoint, secret, new=True)
    return render(request, "dashboard/webhook_form.html", {"form": form, "endpoint": None})


def webhook_edit(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint_for_maintainer(request, pk)
    initial = {"url": endpoint.url, "events": endpoint.events, "description": endpoint.description,
               "active": endpoint.active}
    form = WebhookEndpointForm(request.POST or None, initial=initial, with_secret=False)
    if request.method == "POST" and form.is_valid() and form.save(endpoint=endpoint, user=request.user):
        messages.success(request, f"Webhook endpoint {endpoint.url} saved.")
        return redirect(endpoint)
    return render(request, "dashboard/webhook_form.html", {"form": form, "endpoint": endpoint})


def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The endpoint and its delivery log, newest first, every attempt of each delivery."""
    endpoint = _endpoint_for_maintainer(request, pk)
    deliveries = endpoint.deliveries.all()
    state = request.GET.get("state", "")
    if state in dict(WebhookDelivery.STATE_CHOICES):
        deliveries = deliveries.filter(state=state)
    page = paginate(deliveries, NEWEST_FIRST, request.GET, DELIVERIES_PAGE_SIZE,
                    total=count_at_most(deliveries, DELIVERIES_COUNT_CAP), total_cap=DELIVERIES_COUNT_CAP)
    for delivery in page:
        delivery.body_text = json.dumps(delivery.payload, indent=2, sort_keys=True)
        delivery.attempt_rows = [{**a, "at": parse_datetime(a.get("at") or "")} for a in delivery.attempts]
    return render(request, "dashboard/webhook_detail.html", {
        "endpoint": endpoint, "page": page, "state": state, "states": [s for s, _ in WebhookDelivery.STATE_CHOICES],
    })


@require_POST
@never_cache
def webhook_secret(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint_for_maintainer(request, pk)
    secret = webhooks.regenerate_secret(endpoint, user=request.user)
    return _show_secret(request, endpoint, secret, new=False)


@require_POST
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint_for_maintainer(request, pk)
    webhooks.delete_endpoint(endpoint, user=request.user)
    messages.success(request, f"Webhook endpoint {endpoint.url} deleted, with its delivery log.")
    return redirect("webhooks")


@require_POST
def webhook_redeliver(request: HttpRequest, pk: int, delivery_pk: int) -> HttpResponse:
    endpoint = _endpoint_for_maintainer(request, pk)
    delivery = get_object_or_404(WebhookDelivery.objects.select_related("endpoint"), pk=delivery_pk, endpoint=endpoint)
    try:
        again = webhooks.redeliver(delivery)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{delivery.event} {delivery.event_id} queued again as delivery #{again.pk}.")
    return redirect(endpoint)


@require_POST
def webhook_ping(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint_for_maintainer(request, pk)
    try:
        delivery = webhooks.send_test_event(endpoint)
    except webhooks.InvalidEndpoint as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Test event queued as delivery #{delivery.pk}.")
    return redirect(endpoint)
