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

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import tenacity

from eventbus import (
    DeadLetter,
    EventBus,
    EventRegistry,
    RetryPolicy,
    SQLiteDeadLetterStore,
    SQLiteOutbox,
    event,
    hooks,
    uuid7,
)
from eventbus.outbox import PendingRow
from eventbus.transports import Message
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


@pytest.fixture(params=["redis", "rabbitmq", "nats", "kafka"])
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


# -- a handler's error that holds a secret ---------------------------------------------
#
# A handler fails with a text that carries a database password and a secret query value
# (as a driver's error would). Every path that writes it down is taken: the in-process
# pipeline, the relay on each outbox store (its retries wait in the row, with last_error),
# an outbox row that cannot be decoded, the worker (a handler error and garbage bytes), a
# hook receiver that raises, and the command line. The canary must appear nowhere: not in
# any record of any level (message, arguments, exception and stack text), not in a stored
# error column, not in a dead letter, not in what the command prints.

SECRET_ERROR = (
    f"cannot reach postgresql://app:{CANARY}@db.internal:5432/app "
    f"(also tried https://api.example/v1?password={CANARY}&region=eu)"
)


class LeakyError(ConnectionError):
    """A driver's error: its text carries the URL it was given."""


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as a handler could write it: message, exception and stack text."""
    formatter = logging.Formatter()
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(record.exc_text or "")
        parts.append(record.stack_info or "")
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def outbox_store(backend: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The outbox store of ``backend``: stdlib SQLite, or SQLAlchemy on each database."""
    if backend.name == "sqlite3":
        store: Any = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
    else:
        from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

        engine = request.getfixturevalue("engine")
        store = SQLAlchemyOutbox(
            engine, prefix=request.getfixturevalue("prefix"), poll_interval=0.05
        )
    yield store
    store.close()


def last_errors(store: Any) -> list[str]:
    """The outbox rows' last_error column, read raw."""
    if isinstance(store, SQLiteOutbox):
        with contextlib.closing(sqlite3.connect(store.path)) as connection:
            found = connection.execute("SELECT last_error FROM eventbus_outbox").fetchall()
        return [error for (error,) in found if error]
    import sqlalchemy as sa

    with store.engine.connect() as connection:
        query = sa.select(store.outbox.c.last_error)
        return [error for (error,) in connection.execute(query) if error]


@pytest.mark.parametrize("backend", ["sqlite3", "sqlite", "postgresql", "mariadb"], indirect=True)
def test_a_handler_error_with_a_secret_is_masked_in_every_record_and_column(
    outbox_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox_store,
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_fixed(0.5)),
    )
    wrote_errors: list[str] = []

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None:
        raise LeakyError(SECRET_ERROR)

    @bus.subscribe(delivery="after_commit", name="mail.send")
    def mail(event: OrderPlaced) -> None:
        raise LeakyError(SECRET_ERROR)

    def leaky_receiver(sender: object, **kwargs: object) -> None:
        raise RuntimeError(SECRET_ERROR)

    hooks.handler_failed.connect(leaky_receiver, sender=bus)
    try:
        bus.publish(OrderPlaced(order_id="o-1"))
        # A row whose bytes name no registered event, the name carrying a secret.
        envelope_id = "01900000-0000-7000-8000-000000000001"
        garbage = (
            f'{{"id":"{envelope_id}","name":"secrets.gone?password={CANARY}","version":1,'
            f'"occurred_at":"2024-05-01T00:00:00+00:00","key":null,'
            f'"correlation_id":"{envelope_id}","causation_id":null,"headers":{{}},"data":{{}}}}'
        ).encode()
        outbox_store.write_now(
            [PendingRow(uuid.uuid4(), "secrets.gone", "billing.charge", None, garbage)]
        )
        bus.start()

        def waiting_with_an_error() -> bool:
            wrote_errors[:] = last_errors(outbox_store)
            return bool(wrote_errors)

        wait_for(waiting_with_an_error, "the failed row to wait for its retry")
        wait_for(lambda: bus.dead_letters.count() == 3, "three dead letters")
    finally:
        hooks.handler_failed.disconnect(leaky_receiver, sender=bus)
        bus.close()
    assert any("***" in error for error in wrote_errors)  # the error is kept, masked
    assert all(CANARY not in error for error in wrote_errors)
    letters = bus.dead_letters.list()
    assert {letter.handler for letter in letters} == {"billing.charge", "mail.send"}
    for letter in letters:
        assert CANARY not in f"{letter.message} {letter.traceback}"
        assert "***" in letter.message
    logged = everything_logged(caplog)
    assert "gave up on" in logged  # the failures were logged, masked
    assert CANARY not in logged


async def test_the_worker_masks_a_handler_error_and_garbage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        transport_url="memory://",
        group="g",
        retry=RetryPolicy.never(),
    )

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None:
        raise LeakyError(SECRET_ERROR)

    try:
        await bus.astart()
        await bus.apublish(OrderPlaced(order_id="o-1"))
        transport = bus.transport
        assert transport is not None
        body = b"not an envelope: postgresql://app:" + CANARY.encode() + b"@db/app"
        await transport.publish(
            "secrets.order_placed", Message(uuid.uuid4(), "secrets.order_placed", None, body)
        )
        async with asyncio.timeout(30):
            while bus.dead_letters.count() < 2:
                await asyncio.sleep(0.02)
    finally:
        await bus.aclose()
        outbox.close()
    letters = bus.dead_letters.list()
    assert {letter.handler for letter in letters} == {"billing.charge", "@worker"}
    for letter in letters:
        assert CANARY not in f"{letter.message} {letter.traceback}"
    logged = everything_logged(caplog)
    assert "gave up on" in logged
    assert CANARY not in logged


BROKEN_APP = f"""
raise ConnectionError("cannot reach postgresql://app:{CANARY}@db.internal/app")
"""


def test_the_command_line_prints_no_secret(tmp_path: Path) -> None:
    """An app that fails at import with a secret in its error, and letters that an older
    version stored unmasked: what `eventbus dlq` prints has the secret masked."""
    (tmp_path / "broken_app.py").write_text(BROKEN_APP)
    (tmp_path / "old_app.py").write_text(
        "from eventbus import EventBus, SQLiteDeadLetterStore\n"
        "bus = EventBus(dead_letters=SQLiteDeadLetterStore('dlq.db'))\n"
    )
    store = SQLiteDeadLetterStore(tmp_path / "dlq.db")
    now = datetime.now(UTC)
    letter = DeadLetter(
        id=uuid7(),
        envelope_id=uuid7(),
        event_name="secrets.order_placed",
        handler="billing.charge",
        error_type="LeakyError",
        message="masked when written",
        traceback="",
        attempts=1,
        first_failed_at=now,
        last_failed_at=now,
        payload=b"{}",
    )
    store.add(letter)
    store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "dlq.db")) as connection, connection:
        # What an older version wrote: the raw text, unmasked.
        connection.execute(
            "UPDATE eventbus_dead_letters SET message = ?, traceback = ?",
            (SECRET_ERROR, f"Traceback ...\nLeakyError: {SECRET_ERROR}\n"),
        )
    outputs = []
    for args, app in [
        (["dlq", "list"], "broken_app:bus"),
        (["dlq", "list"], "old_app:bus"),
        (["dlq", "list", "--json"], "old_app:bus"),
        (["dlq", "show", str(letter.id)], "old_app:bus"),
        (["dlq", "show", str(letter.id), "--json"], "old_app:bus"),
        (["dlq", "replay", str(letter.id)], "old_app:bus"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "eventbus", *args, "--app", app],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "EVENTBUS_APP"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outputs.append(done.stdout + done.stderr)
    assert "ConnectionError" in outputs[0]
    assert "LeakyError" in outputs[1]
    for output in outputs:
        assert CANARY not in output
        assert "Traceback (most recent call last)" not in output
