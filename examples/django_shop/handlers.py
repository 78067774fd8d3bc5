"""Events and handlers: subscribed on the project's bus when Django starts (apps.py)."""

import logging

from django.db.backends.base.base import BaseDatabaseWrapper
from eventbus_contrib.django import bus

import eventbus

from .models import Reservation

log = logging.getLogger("shop")


@eventbus.event("django_shop.order_placed")
class OrderPlaced:
    number: str


@bus.subscribe(delivery="durable")  # its writes and its inbox mark commit together: once
def reserve_stock(event: OrderPlaced, connection: BaseDatabaseWrapper) -> None:
    Reservation.objects.using(connection.alias).create(order_number=event.number)


@bus.subscribe(delivery="after_commit")  # after the request's transaction commits
def send_receipt(event: OrderPlaced) -> None:
    log.warning("receipt sent for %s", event.number)
