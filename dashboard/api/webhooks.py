"""Webhook endpoints and their delivery log (maintainers): the same operations as the pages."""

from __future__ import annotations

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Body, Query, Router, Status

from dashboard import access, webhooks
from dashboard.models import WebhookDelivery, WebhookEndpoint
from dashboard.representations import webhook_delivery_item, webhook_endpoint_item

from .pagination import DEFAULT_LIMIT, MAX_LIMIT, Key, Ordering, paginate
from .problems import ApiProblem
from .schemas import DeliveryOut, DeliveryPage, WebhookCreated, WebhookIn, WebhookOut

router = Router(tags=["webhooks"])
NEWEST = Ordering("-id", [Key("id", descending=True)])


def _endpoint(request: HttpRequest, pk: int) -> WebhookEndpoint:
    access.require(request, access.MAINTAIN)
    return get_object_or_404(WebhookEndpoint, pk=pk)


def _refused(exc: webhooks.InvalidEndpoint) -> ApiProblem:
    return ApiProblem(400, str(exc), kind="validation", title="Invalid request",
                      errors=[{"field": exc.field, "message": str(exc)}])


@router.get("/webhooks", response=list[WebhookOut], summary="Webhook endpoints (maintainer)")
def list_webhooks(request: HttpRequest):
    access.require(request, access.MAINTAIN)
    return [webhook_endpoint_item(e) for e in WebhookEndpoint.objects.order_by("id")]


@router.post("/webhooks", response={201: WebhookCreated}, summary="Register an endpoint (maintainer)")
def create_webhook(request: HttpRequest, body: WebhookIn = Body(...)):
    """The answer holds the signing secret, this once: verify `X-Webhook-Signature` with it."""
    access.require(request, access.MAINTAIN)
    try:
        endpoint, secret = webhooks.create_endpoint(url=body.url, events=body.events, description=body.description,
                                                    active=body.active, user=request.user)
    except webhooks.InvalidEndpoint as exc:
        raise _refused(exc) from None
    return Status(201, {**webhook_endpoint_item(endpoint), "secret": secret})


@router.get("/webhooks/{id}", response=WebhookOut, summary="One endpoint (maintainer)")
def get_webhook(request: HttpRequest, id: int):
    return webhook_endpoint_item(_endpoint(request, id))


@router.delete("/webhooks/{id}", response={204: None}, summary="Remove an endpoint and its log (maintainer)")
def delete_webhook(request: HttpRequest, id: int):
    webhooks.delete_endpoint(_endpoint(request, id), user=request.user)
    return Status(204, None)


@router.get("/webhooks/{id}/deliveries", response=DeliveryPage, summary="An endpoint's deliveries, newest first")
def list_deliveries(request: HttpRequest, id: int, state: str | None = None,
                    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT), cursor: str | None = None):
    rows = _endpoint(request, id).deliveries.all()
    if state:
        rows = rows.filter(state=state)
    return paginate(rows, NEWEST, limit, cursor, webhook_delivery_item)


@router.post("/webhooks/{id}/deliveries/{delivery_id}/redeliver", response={202: DeliveryOut},
             summary="Send a delivery's event again, as a new delivery (maintainer)")
def redeliver(request: HttpRequest, id: int, delivery_id: int):
    endpoint = _endpoint(request, id)
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id, endpoint=endpoint)
    try:
        again = webhooks.redeliver(delivery)
    except ValueError as exc:
        raise ApiProblem(409, str(exc), kind="redeliver-refused") from None
    return Status(202, webhook_delivery_item(again))
