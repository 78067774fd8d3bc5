"""A canary password in the transport URL never reaches logs, reprs, errors or the outbox.

For each broker, a bus is pointed at the real server with a wrong password (so the
server refuses it and every layer has a failure to report) and at a port where nothing
listens; it publishes, the relay and the worker fail and retry for a while, and the test
reads everything they wrote: every log record at every level, the outbox rows' last
errors, the dead letters, the reprs. (A server that asks for no password, as NATS here,
takes the wrong one: that case then checks the logs of a working connection, in a
namespace of the test's own that is removed at the end.)
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus import EventBus, EventRegistry, SQLiteOutbox, event
from tests.servers import BrokerNamespace, broker_namespace

CANARY = "canary-Pw-7319"
REGISTRY = EventRegistry()


@event("secrets.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


def _with_password(url: str, *, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "eventbus"
    netloc = f"{user}:{CANARY}@{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def space(request: pytest.FixtureRequest) -> Iterator[BrokerNamespace]:
    with broker_namespace(request.param) as made:
        yield made


@pytest.mark.parametrize("where", ["refused by the server", "nothing listening"])
def test_the_password_stays_secret(
    space: BrokerNamespace, where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = _with_password(space.url, port=1 if where == "nothing listening" else None)
    caplog.set_level(logging.DEBUG)
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.1)
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        transport_url=url,
        group=space.group(),
        shutdown_timeout=0.5,
    )

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None: ...

    connection = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    try:
        with bus.transaction(connection):
            bus.publish(OrderPlaced(order_id="o-1"))
        assert CANARY not in repr(bus.transport)
        assert CANARY not in str(bus.transport)
        deadline = time.monotonic() + 20  # the relay and the worker try, fail, log, retry
        while True:
            errors = [
                row[0] or "" for row in connection.execute("SELECT last_error FROM eventbus_outbox")
            ]
            if any(errors) or not errors or time.monotonic() > deadline:
                break  # a failure written down, or the row went out (no password asked)
            time.sleep(0.2)
    finally:
        connection.close()
        bus.close()
        outbox.close()
    written = caplog.text + "".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert caplog.records, "the failures were logged"
    assert CANARY not in written
    # A server without authentication (NATS here) takes any password: the row went out.
    # Otherwise it is still in the outbox, with why, and the why has no password in it.
    assert all(CANARY not in error for error in errors)
    assert not errors or any(errors)
    for letter in bus.dead_letters.list():
        assert CANARY not in letter.message + letter.traceback
