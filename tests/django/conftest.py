"""The PostgreSQL bus of the test project: the shop's handlers on a second bus, made with
``bus_from_settings`` for the ``postgresql`` database (the project's own bus is on
``default``, SQLite)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.django.fixtures import on_session_end


@pytest.fixture(scope="session")
def postgresql_bus(django_postgresql: str) -> Any:
    from eventbus_contrib.django import bus_from_settings

    from tests.django.shop import handlers

    bus = bus_from_settings({"database": django_postgresql})
    handlers.subscribe(bus)
    handlers.BUSES[django_postgresql] = bus

    def close() -> None:
        bus.close()
        assert bus.outbox is not None
        bus.outbox.close()
        bus.dead_letters.close()

    on_session_end(close)  # before the database goes, with the session's end
    return bus
