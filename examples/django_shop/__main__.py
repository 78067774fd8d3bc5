"""Migrate, place two orders through Django's test client (one fails), show the result."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_shop.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from eventbus_contrib.django import bus  # noqa: E402

from .models import Reservation  # noqa: E402

call_command("migrate", verbosity=0)
client = Client(raise_request_exception=False)
client.post("/orders", {"number": "A-1"})
client.post("/orders", {"number": "A-2", "fail": "1"})  # rolled back, event and all
bus.drain()
print("reserved:", sorted(Reservation.objects.values_list("order_number", flat=True)))
bus.close()
