"""The Django integration in a real project (tests/django/project): requests through
Django's test client, ``TestCase`` and ``TransactionTestCase`` as a user writes them, on
SQLite (the project's ``default``) and PostgreSQL.

``TestCase`` wraps each test in a transaction that is rolled back: on_commit callbacks
run only through ``captureOnCommitCallbacks``, and durable rows are never committed, so
the relay never sees them (they are read through the test's own connection, with the
ORM). ``TransactionTestCase`` commits for real and empties every table after each test:
that is where durable handlers run.
"""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("django")

from tests.django.fixtures import start_django

start_django()  # configured (no database yet) so that the project's modules import

from django.db import connections, transaction  # noqa: E402
from django.test import TestCase, TransactionTestCase  # noqa: E402
from eventbus_contrib.django.models import DeadLetterRow, InboxMark, OutboxRow  # noqa: E402

from eventbus import ConfigurationError, TransactionScopeError  # noqa: E402
from eventbus.outbox import PendingRow  # noqa: E402
from eventbus.testing import capture_events  # noqa: E402
from tests.django.shop import handlers  # noqa: E402
from tests.django.shop.events import OrderNoted, OrderPlaced  # noqa: E402
from tests.django.shop.models import Order, Reservation  # noqa: E402

DURABLE = ["shop.charge", "shop.reserve_stock"]


class Shop:
    """What the tests share: the database under test (``db``) and its bus."""

    db = "default"

    @property
    def bus(self):
        return handlers.BUSES[self.db]

    def post(self, path: str = "orders", **data: str):
        return self.client.post(f"/{self.db}/{path}", data)

    def outbox_rows(self, order_id: str | None = None) -> list[tuple[str, str]]:
        """(event name, destination) of the outbox rows this test's connection sees."""
        rows = OutboxRow.objects.using(self.db).order_by("id")
        return [(row.name, row.destination) for row in rows]

    def drain(self) -> None:
        self.bus.drain(timeout=60)


# -- TestCase: each test in a transaction that never commits -------------------------------


@pytest.mark.usefixtures("django_project")
class OnCommitTests(Shop, TestCase):
    databases = {"default"}

    def setUp(self) -> None:
        handlers.forget()

    def test_after_commit_handlers_wait_for_the_commit(self) -> None:
        with self.captureOnCommitCallbacks(using=self.db) as callbacks:
            response = self.post(order_id="n-1", noted="1")
        assert response.status_code == 200
        assert handlers.NOTES == []  # the request's transaction has not committed
        assert len(callbacks) == 1
        callbacks[0]()  # what the commit would have run
        self.drain()
        assert handlers.NOTES == ["n-1"]

    def test_capture_on_commit_callbacks_with_execute_runs_them(self) -> None:
        with self.captureOnCommitCallbacks(using=self.db, execute=True):
            self.post(order_id="n-2", noted="1")
        self.drain()
        assert handlers.NOTES == ["n-2"]

    def test_durable_rows_are_written_in_the_request_transaction(self) -> None:
        self.post(order_id="o-1")
        # Written through the test's connection: the ORM sees them, the relay never will.
        assert sorted(self.outbox_rows()) == [("djangotests.order_placed", d) for d in DURABLE]
        assert handlers.RUNS == []
        assert Order.objects.using(self.db).filter(id="o-1").exists()

    def test_a_failed_request_rolls_back_what_it_published(self) -> None:
        with self.captureOnCommitCallbacks(using=self.db) as callbacks, pytest.raises(RuntimeError):
            self.post(order_id="o-2", fail="1")
        assert self.outbox_rows() == []
        assert not Order.objects.using(self.db).filter(id="o-2").exists()
        assert callbacks == []  # the receipt is dropped with the rollback

    def test_a_rolled_back_inner_atomic_block_drops_its_events(self) -> None:
        with (
            capture_events(self.bus) as captured,
            self.captureOnCommitCallbacks(using=self.db) as callbacks,
        ):
            self.post(order_id="o-3", inner="1")
        assert [e.order_id for e in captured.of_type(OrderPlaced)] == ["o-3", "o-3-inner"]
        rows = OutboxRow.objects.using(self.db)
        payloads = [bytes(row.payload) for row in rows]
        assert len(payloads) == 2
        assert all(b'"o-3"' in payload for payload in payloads)  # not o-3-inner's
        assert len(callbacks) == 2  # the outer event's: its receipt and the relay's nudge


@pytest.mark.usefixtures("postgresql_bus")
class PostgreSQLOnCommitTests(OnCommitTests):
    db = "postgresql"
    databases = {"default", "postgresql"}


# -- TransactionTestCase: commits for real ----------------------------------------------


@pytest.mark.usefixtures("django_project")
class DeliveryTests(Shop, TransactionTestCase):
    databases = {"default"}

    def setUp(self) -> None:
        handlers.forget()

    def tearDown(self) -> None:
        self.drain()  # nothing of this test is left running into the next one

    def test_durable_and_after_commit_handlers_run_after_the_commit(self) -> None:
        response = self.post(order_id="o-10")
        assert response.status_code == 200
        self.drain()
        assert sorted(handlers.RUNS) == [(h, "o-10") for h in DURABLE]
        assert [(self.db, "o-10")] == handlers.RECEIPTS
        assert list(Reservation.objects.using(self.db).values_list("order_id", flat=True)) == [
            "o-10"
        ]
        assert self.outbox_rows() == []
        marks = set(InboxMark.objects.using(self.db).values_list("handler", flat=True))
        assert marks == set(DURABLE)

    def test_a_rolled_back_request_publishes_nothing(self) -> None:
        with pytest.raises(RuntimeError):
            self.post(order_id="o-11", fail="1")
        self.drain()
        assert handlers.RUNS == []
        assert handlers.RECEIPTS == []
        assert self.outbox_rows() == []
        assert not Order.objects.using(self.db).exists()

    def test_a_rolled_back_inner_block_drops_only_its_events(self) -> None:
        self.post(order_id="o-12", inner="1")
        self.drain()
        assert sorted(handlers.RUNS) == [(h, "o-12") for h in DURABLE]
        assert [(self.db, "o-12")] == handlers.RECEIPTS

    def test_outside_any_transaction_a_durable_publish_commits_its_row_at_once(self) -> None:
        """ATOMIC_REQUESTS off (autocommit): the row is committed by the publish, so the
        event is delivered although the view fails after it."""
        with pytest.raises(RuntimeError):
            self.post("orders/autocommit", order_id="o-13", fail="1")
        self.drain()
        assert sorted(handlers.RUNS) == [(h, "o-13") for h in DURABLE]
        assert Order.objects.using(self.db).filter(id="o-13").exists()

    def test_an_async_view_publishes_through_sync_to_async(self) -> None:
        """The README's pattern for async views: the atomic block in the sync code that
        ``sync_to_async`` runs commits the order with its event, or rolls both back."""
        response = self.post("orders/async", order_id="o-17")
        assert response.status_code == 200
        with pytest.raises(RuntimeError):
            self.post("orders/async", order_id="o-18", fail="1")
        self.drain()
        assert sorted(handlers.RUNS) == [(h, "o-17") for h in DURABLE]
        assert [(self.db, "o-17")] == handlers.RECEIPTS
        assert handlers.NOTES == ["o-17"]
        assert list(Reservation.objects.using(self.db).values_list("order_id", flat=True)) == [
            "o-17"
        ]
        assert not Order.objects.using(self.db).filter(id="o-18").exists()
        assert self.outbox_rows() == []

    def test_a_redelivered_row_changes_nothing(self) -> None:
        """The durable handler's effects and its inbox mark committed together: the same
        envelope delivered again (a relay that crashed before completing) runs nothing."""
        with capture_events(self.bus) as captured:
            self.post(order_id="o-14")
        self.drain()
        (envelope,) = captured.envelopes
        payload = self.bus.codec.encode(envelope)
        again = PendingRow(envelope.id, envelope.name, "shop.reserve_stock", "o-14", payload)
        self.bus.outbox.write_now([again])
        self.bus.outbox.write_now([again])
        self.bus.start()
        self.drain()
        assert handlers.RUNS.count(("shop.reserve_stock", "o-14")) == 1
        assert Reservation.objects.using(self.db).filter(order_id="o-14").count() == 1
        assert self.outbox_rows() == []

    def test_a_handler_that_gives_up_leaves_a_dead_letter_in_the_database(self) -> None:
        handlers.BROKEN.add("bad-1")
        self.post(order_id="bad-1")
        self.drain()
        (letter,) = self.bus.dead_letters.list(handler="shop.charge")
        assert "refused" in letter.message
        stored = DeadLetterRow.objects.using(self.db).get()
        assert (stored.id, stored.handler) == (str(letter.id), "shop.charge")

        handlers.BROKEN.clear()  # mended: the replay runs it again, and it succeeds
        result = self.bus.replay(letter.id)
        assert result.outcome == "replayed"
        assert self.bus.dead_letters.count() == 0

    def test_bus_transaction_on_the_connection_is_an_atomic_block(self) -> None:
        connection = connections[self.db]
        with self.bus.transaction(connection):
            assert connection.in_atomic_block
            Order.objects.using(self.db).create(id="o-15")
            self.bus.publish(OrderPlaced(order_id="o-15"), key="o-15")
        with pytest.raises(ZeroDivisionError), self.bus.transaction(connection):  # noqa: PT012
            self.bus.publish(OrderPlaced(order_id="o-16"), key="o-16")
            _ = 1 / 0
        self.drain()
        assert sorted(handlers.RUNS) == [(h, "o-15") for h in DURABLE]
        assert [(self.db, "o-15")] == handlers.RECEIPTS

    def test_an_after_commit_publish_under_manual_transactions_is_refused(self) -> None:
        """Autocommit off outside atomic: Django hears no commit, so after-commit handlers
        could not wait for it; durable ones join the transaction."""
        transaction.set_autocommit(False, using=self.db)
        try:
            with pytest.raises(TransactionScopeError, match="atomic"):
                self.bus.publish(OrderNoted(order_id="n-20"))
            transaction.rollback(using=self.db)
        finally:
            transaction.set_autocommit(True, using=self.db)
        assert handlers.NOTES == []


@pytest.mark.usefixtures("postgresql_bus")
class PostgreSQLDeliveryTests(DeliveryTests):
    db = "postgresql"
    databases = {"default", "postgresql"}


# -- settings.EVENTBUS ---------------------------------------------------------------------


@pytest.mark.usefixtures("django_project")
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transprt_url": "redis://"}, "'transprt_url' (did you mean 'transport_url'?)"),
        ({"TRANSPORT_URL": "redis://"}, "did you mean 'transport_url'"),
        ({"colour": "blue"}, "unknown key 'colour' in settings.EVENTBUS"),
        ({"database": "nowhere"}, "no database 'nowhere' in settings.DATABASES"),
        ({"dead_letters": "memory"}, "must be a dead-letter store"),
        ({"batch": 0}, "settings.EVENTBUS: batch must be an int >= 1"),
        ({"notify": "yes"}, "settings.EVENTBUS: notify must be True or False"),
        ({"max_deliveries": 0}, "settings.EVENTBUS: the keyword argument max_deliveries"),
    ],
    ids=str,
)
def test_bad_settings_are_refused_naming_the_fix(settings: dict, message: str) -> None:
    from eventbus_contrib.django import bus_from_settings

    with pytest.raises(ConfigurationError) as refused:
        bus_from_settings(settings)
    assert message in str(refused.value)


def test_settings_that_are_not_a_dict_are_refused(django_project: None) -> None:
    from eventbus_contrib.django._settings import checked_settings

    with pytest.raises(ConfigurationError, match="must be a dict"):
        checked_settings(["transport_url"])


def test_the_project_bus_is_made_from_settings_once(django_project: None) -> None:
    import eventbus_contrib.django as integration
    from eventbus_contrib.django import DjangoDeadLetterStore, DjangoOutbox, bus

    assert integration.bus is bus
    assert isinstance(bus.outbox, DjangoOutbox)
    assert bus.outbox.alias == "default"
    assert isinstance(bus.dead_letters, DjangoDeadLetterStore)
    names = {h.name for h in bus.handlers}
    assert {"shop.reserve_stock", "shop.charge", "shop.send_receipt"} <= names


def test_an_in_memory_sqlite_database_is_refused_for_the_relay(fresh_database) -> None:
    from eventbus_contrib.django import DjangoOutbox

    from tests.django.fixtures import add_database, remove_database

    add_database("in_memory", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})
    try:
        outbox = DjangoOutbox("in_memory")
        with pytest.raises(ConfigurationError, match="in-memory SQLite") as refused:
            outbox.status()
        assert "TEST" in str(refused.value)
        outbox.close()
    finally:
        remove_database("in_memory")


def test_a_connection_of_another_database_is_refused(fresh_database) -> None:
    from eventbus_contrib.django import DjangoOutbox

    other = fresh_database("sqlite")
    outbox = DjangoOutbox(other)
    try:
        row = PendingRow(uuid.uuid4(), "x", "h", None, b"{}")
        with pytest.raises(ConfigurationError, match="the outbox is in"):
            outbox.write(connections["default"], [row])
        with pytest.raises(ConfigurationError, match="takes a Django connection"):
            outbox.write(object(), [row])
    finally:
        outbox.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_clear_empties_the_outbox_and_the_inbox_for_tests(fresh_database, kind: str) -> None:
    from eventbus_contrib.django import DjangoOutbox

    outbox = DjangoOutbox(fresh_database(kind))
    try:
        outbox.write_now([PendingRow(uuid.uuid4(), "x", "h", "k", b"{}") for _ in range(3)])
        outbox.claim(owner="relay", batch=1, lease=30)  # leased rows go too
        envelope_id = uuid.uuid4()
        assert outbox.mark("h", envelope_id)
        outbox.clear()
        assert outbox.status().pending == 0
        assert not outbox.seen("h", envelope_id)
    finally:
        outbox.close()


@pytest.mark.parametrize(("kind", "notify"), [("sqlite", True), ("postgresql", False)])
def test_without_notifications_the_relay_polls(fresh_database, kind: str, notify: bool) -> None:
    """SQLite has no notifications, and ``notify=False`` turns PostgreSQL's off: ``listen``
    says there is nothing to listen to (the relay then polls every ``poll_interval``),
    and a write sends no NOTIFY."""
    from eventbus_contrib.django import DjangoOutbox

    outbox = DjangoOutbox(fresh_database(kind), notify=notify)
    try:
        assert outbox.listen(lambda: None) is None
        assert "pg_notify" not in outbox._sql.insert(1, notify=outbox.notify)
    finally:
        outbox.close()


# Alone, after the rest: the NOTIFY channel is the database's, so another test's outbox
# write in the same database (a parallel worker) would wake this listener during the
# rollback check (seen once at the floors).
@pytest.mark.slow
def test_a_commit_wakes_a_listener_and_a_rollback_does_not(fresh_database) -> None:
    """PostgreSQL sends the write's NOTIFY at COMMIT only: a rolled-back atomic block
    wakes nobody; a committed one, and a write outside any transaction, do. Stopping
    closes the listener's connection."""
    import threading

    from eventbus_contrib.django import DjangoOutbox

    alias = fresh_database("postgresql")
    outbox = DjangoOutbox(alias)
    woken = threading.Event()
    before = set(threading.enumerate())
    stop = outbox.listen(woken.set)
    assert stop is not None
    (listener,) = [t for t in set(threading.enumerate()) - before if "listen" in t.name]
    try:
        time.sleep(1)  # the listener's LISTEN runs before the writes
        with transaction.atomic(using=alias):
            outbox.write(connections[alias], [PendingRow(uuid.uuid4(), "x", "h", None, b"{}")])
            transaction.set_rollback(True, using=alias)
        assert not woken.wait(1.5)  # the listener looks every 0.5 s: time to see it
        with transaction.atomic(using=alias):
            outbox.write(connections[alias], [PendingRow(uuid.uuid4(), "x", "h", None, b"{}")])
        assert woken.wait(10)
        woken.clear()
        outbox.write_now([PendingRow(uuid.uuid4(), "x", "h", None, b"{}")])
        assert woken.wait(10)
    finally:
        stop()
        outbox.close()
    assert not listener.is_alive()
