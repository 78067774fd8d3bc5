"""Every request is one transaction: what a view publishes commits, or rolls back, with
what it wrote. On ``default`` by ATOMIC_REQUESTS, on ``postgresql`` by ``atomic_request``
(the same, for the one database the request is about)."""

from collections.abc import Callable
from functools import wraps

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse

from .events import OrderNoted, OrderPlaced
from .handlers import BUSES
from .models import Order


class Abandoned(Exception):  # noqa: N818
    """Leaves an inner atomic block, which rolls it back."""


def atomic_request(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    @wraps(view)
    def atomic(request: HttpRequest, db: str) -> JsonResponse:
        if db == "default":  # ATOMIC_REQUESTS
            return view(request, db)
        with transaction.atomic(using=db):
            return view(request, db)

    return atomic


@atomic_request
def place_order(request: HttpRequest, db: str) -> JsonResponse:
    bus = BUSES[db]
    order_id = request.POST["order_id"]
    Order.objects.using(db).create(id=order_id)
    event = OrderNoted if request.POST.get("noted") else OrderPlaced
    bus.publish(event(order_id=order_id), key=order_id)
    if request.POST.get("inner"):
        # A savepoint that rolls back: what was published inside it goes with it.
        try:
            with transaction.atomic(using=db):
                bus.publish(OrderPlaced(order_id=f"{order_id}-inner"), key=order_id)
                raise Abandoned
        except Abandoned:
            pass
    if request.POST.get("fail"):
        raise RuntimeError("the request failed after publishing")
    return JsonResponse({"order_id": order_id})


@transaction.non_atomic_requests(using="default")
def place_order_autocommit(request: HttpRequest, db: str) -> JsonResponse:
    """Outside any transaction (autocommit): a durable publish commits its row at once."""
    order_id = request.POST["order_id"]
    Order.objects.using(db).create(id=order_id)
    BUSES[db].publish(OrderPlaced(order_id=order_id), key=order_id)
    if request.POST.get("fail"):
        raise RuntimeError("failed after a publish outside any transaction")
    return JsonResponse({"order_id": order_id})


@transaction.non_atomic_requests(using="default")  # Django refuses ATOMIC_REQUESTS on async views
async def place_order_async(request: HttpRequest, db: str) -> JsonResponse:
    """An async view, as the README has it: Django refuses database work on the event loop,
    so the order and its event go through ``sync_to_async``, in an atomic block of the sync
    code it runs; a note is published on its own, ``sync_to_async(bus.publish)``."""
    bus = BUSES[db]
    order_id = request.POST["order_id"]
    fail = bool(request.POST.get("fail"))

    def place() -> None:
        with transaction.atomic(using=db):
            Order.objects.using(db).create(id=order_id)
            bus.publish(OrderPlaced(order_id=order_id), key=order_id)
            if fail:
                raise RuntimeError("the order failed after publishing")

    await sync_to_async(place)()
    await sync_to_async(bus.publish)(OrderNoted(order_id=order_id), key=order_id)
    return JsonResponse({"order_id": order_id})
