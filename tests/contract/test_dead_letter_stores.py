"""The DeadLetterStore contract, written once and run against every store.

Every store must behave identically: the same filters, order, claims, fencing and errors
(memory, SQLite, and Django's on SQLite and PostgreSQL).
The SQLite-only tests at the end cover what only a file can do: survive a reopen, match
its published DDL, and let threads and processes race for a claim safely.
"""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import uuid7
from eventbus.deadletters import DeadLetter, MemoryDeadLetterStore, SQLiteDeadLetterStore
from eventbus.errors import ConfigurationError, DeadLetterNotFoundError, DeadLetterStoreError
from eventbus.typing import DeadLetterStore

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LEASE = 30.0


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start: float = 1_714_564_800.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_letter(
    *,
    handler: str = "billing.charge_card",
    event_name: str = "order.placed",
    failed_at: datetime = T0,
    first_failed_at: datetime | None = None,
    attempts: int = 3,
    error_type: str = "billing.gateway.CardDeclined",
    message: str = "card declined: insufficient funds",
    letter_id: uuid.UUID | None = None,
    envelope_id: uuid.UUID | None = None,
) -> DeadLetter:
    envelope_id = envelope_id or uuid7()
    body = {
        "id": str(envelope_id),
        "name": event_name,
        "version": 1,
        "occurred_at": (first_failed_at or failed_at).isoformat(),
        "data": {"order_id": 4711, "total": "129.90", "currency": "EUR"},
    }
    return DeadLetter(
        id=letter_id or uuid7(),
        envelope_id=envelope_id,
        event_name=event_name,
        handler=handler,
        error_type=error_type,
        message=message,
        traceback=(
            "Traceback (most recent call last):\n"
            '  File "billing/handlers.py", line 42, in charge_card\n'
            "    gateway.charge(order.total)\n"
            f"{error_type}: {message}\n"
        ),
        attempts=attempts,
        first_failed_at=first_failed_at or failed_at - timedelta(minutes=5),
        last_failed_at=failed_at,
        payload=json.dumps(body, separators=(",", ":")).encode(),
    )


def ids(letters: list[DeadLetter]) -> list[uuid.UUID]:
    return [letter.id for letter in letters]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _open(kind: str, request: pytest.FixtureRequest, clock: FakeClock) -> DeadLetterStore:
    if kind == "memory":
        return MemoryDeadLetterStore(clock=clock)
    if kind == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return SQLiteDeadLetterStore(tmp_path / "state" / "dead_letters.db", clock=clock)
    if kind.startswith("django-"):
        # A database of the Django test project's, of this test's own (tests/django).
        from eventbus_contrib.django import DjangoDeadLetterStore

        database = request.getfixturevalue("fresh_database")(kind.removeprefix("django-"))
        return DjangoDeadLetterStore(database, clock=clock)
    return SQLiteDeadLetterStore(":memory:", clock=clock)


# Every store a contract test runs on (each Django one: SQLite, PostgreSQL).
STORES = ["memory", "sqlite", "django-sqlite", "django-postgresql"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[DeadLetterStore]:
    opened = _open(request.param, request, clock)
    yield opened
    opened.close()


@pytest.fixture(params=[*STORES, "sqlite-memory"])
def every_store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[DeadLetterStore]:
    opened = _open(request.param, request, clock)
    yield opened
    opened.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "dead_letters.db"


def test_the_stores_satisfy_the_protocol(every_store: DeadLetterStore) -> None:
    assert isinstance(every_store, DeadLetterStore)


# -- round trip, add, get ----------------------------------------------------------------


def test_every_field_round_trips_exactly(every_store: DeadLetterStore) -> None:
    plus_0530 = timezone(timedelta(hours=5, minutes=30))
    letter = attrs.evolve(
        make_letter(
            message="Zahlung abgelehnt: Größe ≠ 0 — 支払い拒否 ❌ 'quotes' \"and\" ; DROP TABLE",
            attempts=7,
        ),
        first_failed_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=plus_0530),
        last_failed_at=datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
        payload=b'{"name":"order.placed"}\x00\xff\xfe raw bytes',
    )
    every_store.add(letter)

    got = every_store.get(letter.id)

    assert got == letter
    for field in attrs.fields(DeadLetter):
        assert getattr(got, field.name) == getattr(letter, field.name), field.name
    assert type(got.payload) is bytes
    assert type(got.id) is uuid.UUID
    assert type(got.envelope_id) is uuid.UUID
    # Datetimes come back as the same instants, in UTC, to the microsecond.
    assert got.first_failed_at == datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=UTC)
    assert got.first_failed_at.utcoffset() == timedelta(0)
    assert got.last_failed_at.microsecond == 1
    assert got.last_failed_at.utcoffset() == timedelta(0)
    assert every_store.list() == [letter]


def test_a_letter_from_a_real_failure_round_trips(store: DeadLetterStore) -> None:
    original = make_letter()
    try:
        raise RuntimeError("gateway timeout talking to https://user:hunter2@pay.example/")
    except RuntimeError as error:
        failed = original.failed_again(error, attempts=2)
    store.add(failed)
    got = store.get(failed.id)
    assert got == failed
    assert got.error_type == "RuntimeError"
    assert "hunter2" not in got.message
    assert got.attempts == 5


def test_adding_an_existing_id_is_refused_and_keeps_the_first(store: DeadLetterStore) -> None:
    first = make_letter(message="the first failure")
    store.add(first)
    second = attrs.evolve(make_letter(message="an impostor"), id=first.id)

    with pytest.raises(DeadLetterStoreError, match=str(first.id)) as caught:
        store.add(second)

    assert not isinstance(caught.value, DeadLetterNotFoundError)
    assert store.get(first.id).message == "the first failure"
    assert store.count() == 1


def test_get_of_an_unknown_id_raises_not_found(store: DeadLetterStore) -> None:
    store.add(make_letter())
    missing = uuid7()
    with pytest.raises(DeadLetterNotFoundError, match=str(missing)) as caught:
        store.get(missing)
    assert isinstance(caught.value, LookupError)


def test_naive_datetimes_in_a_letter_are_refused(store: DeadLetterStore) -> None:
    naive = attrs.evolve(make_letter(), last_failed_at=datetime(2024, 5, 1, 12, 0))  # noqa: DTZ001
    with pytest.raises(ConfigurationError, match="last_failed_at"):
        store.add(naive)
    assert store.count() == 0


def test_ids_that_are_not_uuids_are_refused(store: DeadLetterStore) -> None:
    letter = make_letter()
    store.add(letter)
    with pytest.raises(ConfigurationError):
        store.get(str(letter.id))  # type: ignore[arg-type]


# -- list, count, filters ----------------------------------------------------------------


@pytest.fixture
def mixed(store: DeadLetterStore) -> dict[str, DeadLetter]:
    """Six letters over two handlers, two events and an hour, added out of order."""
    letters = {
        "charge_placed_0": make_letter(failed_at=T0),
        "charge_paid_10": make_letter(
            event_name="order.paid", failed_at=T0 + timedelta(minutes=10)
        ),
        "mail_placed_20": make_letter(handler="mail.confirm", failed_at=T0 + timedelta(minutes=20)),
        "mail_paid_30": make_letter(
            handler="mail.confirm", event_name="order.paid", failed_at=T0 + timedelta(minutes=30)
        ),
        "charge_placed_40": make_letter(failed_at=T0 + timedelta(minutes=40)),
        "mail_placed_60": make_letter(handler="mail.confirm", failed_at=T0 + timedelta(minutes=60)),
    }
    for key in ["mail_paid_30", "charge_placed_40", "charge_placed_0", "mail_placed_60"]:
        store.add(letters[key])
    store.add(letters["mail_placed_20"])
    store.add(letters["charge_paid_10"])
    return letters


def keys(mixed: dict[str, DeadLetter], letters: list[DeadLetter]) -> list[str]:
    by_id = {letter.id: key for key, letter in mixed.items()}
    return [by_id[letter.id] for letter in letters]


def test_list_is_oldest_failure_first(store: DeadLetterStore, mixed: dict[str, DeadLetter]) -> None:
    assert keys(mixed, store.list()) == [
        "charge_placed_0",
        "charge_paid_10",
        "mail_placed_20",
        "mail_paid_30",
        "charge_placed_40",
        "mail_placed_60",
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            {"handler": "billing.charge_card"},
            ["charge_placed_0", "charge_paid_10", "charge_placed_40"],
        ),
        ({"handler": "mail.confirm"}, ["mail_placed_20", "mail_paid_30", "mail_placed_60"]),
        ({"handler": "mail"}, []),
        ({"event_name": "order.paid"}, ["charge_paid_10", "mail_paid_30"]),
        ({"event_name": "ORDER.PAID"}, []),
        (
            {"since": T0 + timedelta(minutes=30)},
            ["mail_paid_30", "charge_placed_40", "mail_placed_60"],
        ),
        (
            {"until": T0 + timedelta(minutes=20)},
            ["charge_placed_0", "charge_paid_10", "mail_placed_20"],
        ),
        (
            {"since": T0 + timedelta(minutes=10), "until": T0 + timedelta(minutes=40)},
            ["charge_paid_10", "mail_placed_20", "mail_paid_30", "charge_placed_40"],
        ),
        (
            {"handler": "mail.confirm", "event_name": "order.placed"},
            ["mail_placed_20", "mail_placed_60"],
        ),
        (
            {
                "handler": "billing.charge_card",
                "event_name": "order.placed",
                "since": T0 + timedelta(seconds=1),
            },
            ["charge_placed_40"],
        ),
        (
            {
                "handler": "mail.confirm",
                "since": T0 + timedelta(minutes=25),
                "until": T0 + timedelta(minutes=59, seconds=59, microseconds=999999),
            },
            ["mail_paid_30"],
        ),
        ({"since": T0 + timedelta(minutes=41), "until": T0 + timedelta(minutes=59)}, []),
        ({"since": T0 + timedelta(hours=2)}, []),
    ],
)
def test_list_and_count_filter(
    store: DeadLetterStore,
    mixed: dict[str, DeadLetter],
    filters: dict[str, object],
    expected: list[str],
) -> None:
    assert keys(mixed, store.list(**filters)) == expected  # type: ignore[arg-type]
    assert store.count(**filters) == len(expected)  # type: ignore[arg-type]


def test_since_and_until_are_inclusive_to_the_microsecond(store: DeadLetterStore) -> None:
    at = T0 + timedelta(microseconds=1)
    letter = make_letter(failed_at=at)
    store.add(letter)
    tokyo = timezone(timedelta(hours=9))
    same_instant_elsewhere = at.astimezone(tokyo)
    assert ids(store.list(since=at, until=at)) == [letter.id]
    assert ids(store.list(since=same_instant_elsewhere, until=same_instant_elsewhere)) == [
        letter.id
    ]
    assert store.list(since=at + timedelta(microseconds=1)) == []
    assert store.list(until=at - timedelta(microseconds=1)) == []


def test_equal_failure_times_are_ordered_by_id(store: DeadLetterStore) -> None:
    letter_ids = sorted(uuid.uuid4() for _ in range(8))
    for letter_id in reversed(letter_ids):
        store.add(make_letter(letter_id=letter_id, failed_at=T0))
    earliest = make_letter(failed_at=T0 - timedelta(microseconds=1))
    store.add(earliest)
    assert ids(store.list()) == [earliest.id, *letter_ids]


def test_limit_takes_the_oldest(store: DeadLetterStore, mixed: dict[str, DeadLetter]) -> None:
    assert keys(mixed, store.list(limit=1)) == ["charge_placed_0"]
    assert keys(mixed, store.list(limit=2, handler="mail.confirm")) == [
        "mail_placed_20",
        "mail_paid_30",
    ]
    assert len(store.list(limit=100)) == 6


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_limit_must_be_a_positive_int(store: DeadLetterStore, limit: object) -> None:
    store.add(make_letter())
    with pytest.raises(ConfigurationError, match="limit"):
        store.list(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "filters",
    [
        {"since": datetime(2024, 5, 1)},  # noqa: DTZ001 - naive on purpose
        {"until": datetime(2024, 5, 1)},  # noqa: DTZ001
        {"since": T0, "until": datetime(2024, 5, 1)},  # noqa: DTZ001
        {"since": "2024-05-01T00:00:00+00:00"},
        {"until": 1714521600.0},
        {"since": T0.date()},
        {"handler": 42},
        {"event_name": b"order.placed"},
    ],
)
def test_bad_filters_are_refused(store: DeadLetterStore, filters: dict[str, object]) -> None:
    store.add(make_letter())
    with pytest.raises(ConfigurationError):
        store.list(**filters)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        store.count(**filters)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        store.purge(**filters)  # type: ignore[arg-type]
    assert store.count() == 1


letters_strategy = st.lists(
    st.builds(
        lambda letter_id, envelope_id, handler, event, minutes, micro: make_letter(
            letter_id=letter_id,
            envelope_id=envelope_id,
            handler=handler,
            event_name=event,
            failed_at=T0 + timedelta(minutes=minutes, microseconds=micro),
        ),
        st.uuids(),
        st.uuids(),
        st.sampled_from(["a.one", "a.two", "b.three"]),
        st.sampled_from(["order.placed", "order.paid"]),
        st.integers(0, 5),
        st.sampled_from([0, 1, 999_999]),
    ),
    max_size=12,
    unique_by=lambda letter: letter.id,
)
filters_strategy = st.fixed_dictionaries(
    {},
    optional={
        "handler": st.sampled_from(["a.one", "a.two", "b.three", "c"]),
        "event_name": st.sampled_from(["order.placed", "order.paid"]),
        "since": st.integers(0, 6).map(lambda m: T0 + timedelta(minutes=m)),
        "until": st.integers(0, 6).map(lambda m: T0 + timedelta(minutes=m, microseconds=1)),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(letters=letters_strategy, filters=filters_strategy, limit=st.none() | st.integers(1, 5))
def test_count_matches_list_and_both_stores_agree(
    letters: list[DeadLetter], filters: dict[str, object], limit: int | None
) -> None:
    memory = MemoryDeadLetterStore()
    sqlite = SQLiteDeadLetterStore(":memory:")
    try:
        for letter in letters:
            memory.add(letter)
            sqlite.add(letter)
        listed = memory.list(**filters)  # type: ignore[arg-type]
        expected = sorted(
            (
                letter
                for letter in letters
                if all(
                    getattr(letter, key) == value
                    for key, value in filters.items()
                    if key in {"handler", "event_name"}
                )
                and letter.last_failed_at >= filters.get("since", T0)  # type: ignore[operator]
                and letter.last_failed_at <= filters.get("until", T0 + timedelta(days=1))  # type: ignore[operator]
            ),
            key=lambda letter: (letter.last_failed_at, letter.id),
        )
        assert listed == expected
        assert sqlite.list(**filters) == expected  # type: ignore[arg-type]
        assert memory.count(**filters) == sqlite.count(**filters) == len(expected)  # type: ignore[arg-type]
        assert memory.list(limit=limit, **filters) == sqlite.list(limit=limit, **filters)  # type: ignore[arg-type]
        assert memory.list(limit=limit, **filters) == expected[:limit]  # type: ignore[arg-type]
    finally:
        memory.close()
        sqlite.close()


# -- claim, resolve, release -------------------------------------------------------------


def test_a_claim_returns_the_letter_and_refuses_a_second_owner(
    every_store: DeadLetterStore, clock: FakeClock
) -> None:
    letter = make_letter()
    every_store.add(letter)

    assert every_store.claim(letter.id, owner="replayer-a", lease=LEASE) == letter
    assert every_store.claim(letter.id, owner="replayer-b", lease=LEASE) is None
    clock.advance(LEASE)  # the lease runs up to and including its last instant
    assert every_store.claim(letter.id, owner="replayer-b", lease=LEASE) is None
    # A claimed letter is still listed and counted.
    assert ids(every_store.list()) == [letter.id]
    assert every_store.count() == 1


def test_an_expired_claim_is_taken_over(every_store: DeadLetterStore, clock: FakeClock) -> None:
    letter = make_letter()
    every_store.add(letter)
    assert every_store.claim(letter.id, owner="replayer-a", lease=LEASE) is not None

    clock.advance(LEASE + 0.001)

    assert every_store.claim(letter.id, owner="replayer-b", lease=LEASE) == letter
    assert every_store.claim(letter.id, owner="replayer-a", lease=LEASE) is None
    # The old owner is fenced off: it can neither resolve nor write the letter.
    assert every_store.resolve(letter.id, owner="replayer-a") is False
    with pytest.raises(DeadLetterStoreError, match="replayer-a"):
        every_store.release(letter.id, owner="replayer-a")
    assert every_store.get(letter.id) == letter
    assert every_store.resolve(letter.id, owner="replayer-b") is True


def test_the_same_owner_renews_its_claim(store: DeadLetterStore, clock: FakeClock) -> None:
    letter = make_letter()
    store.add(letter)
    assert store.claim(letter.id, owner="replayer-a", lease=LEASE) is not None
    clock.advance(LEASE - 1)
    assert store.claim(letter.id, owner="replayer-a", lease=LEASE) is not None
    clock.advance(LEASE - 1)  # past the first lease, inside the renewed one
    assert store.claim(letter.id, owner="replayer-b", lease=LEASE) is None
    clock.advance(2)
    assert store.claim(letter.id, owner="replayer-b", lease=LEASE) is not None


def test_claim_of_an_unknown_id_raises_not_found(store: DeadLetterStore) -> None:
    with pytest.raises(DeadLetterNotFoundError):
        store.claim(uuid7(), owner="replayer-a", lease=LEASE)


@pytest.mark.parametrize("lease", [0, -1.0, float("nan"), float("inf"), True, "30", 10**400])
def test_a_lease_must_be_positive_and_finite(store: DeadLetterStore, lease: object) -> None:
    letter = make_letter()
    store.add(letter)
    with pytest.raises(ConfigurationError, match="lease"):
        store.claim(letter.id, owner="replayer-a", lease=lease)  # type: ignore[arg-type]
    assert store.claim(letter.id, owner="replayer-b", lease=LEASE) is not None


@pytest.mark.parametrize("owner", ["", None, 7])
def test_an_owner_must_be_a_non_empty_name(store: DeadLetterStore, owner: object) -> None:
    letter = make_letter()
    store.add(letter)
    with pytest.raises(ConfigurationError, match="owner"):
        store.claim(letter.id, owner=owner, lease=LEASE)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="owner"):
        store.resolve(letter.id, owner=owner)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="owner"):
        store.release(letter.id, owner=owner)  # type: ignore[arg-type]


def test_resolve_deletes_only_for_the_owner(store: DeadLetterStore, clock: FakeClock) -> None:
    letter, other = make_letter(), make_letter()
    store.add(letter)
    store.add(other)

    assert store.resolve(letter.id, owner="replayer-a") is False  # not claimed
    assert store.claim(letter.id, owner="replayer-a", lease=LEASE) is not None
    assert store.resolve(letter.id, owner="replayer-b") is False
    assert store.get(letter.id) == letter
    assert store.resolve(uuid7(), owner="replayer-a") is False

    assert store.resolve(letter.id, owner="replayer-a") is True
    with pytest.raises(DeadLetterNotFoundError):
        store.get(letter.id)
    assert ids(store.list()) == [other.id]
    assert store.resolve(letter.id, owner="replayer-a") is False


def test_an_owner_whose_lease_ran_out_may_resolve_if_nobody_took_over(
    store: DeadLetterStore, clock: FakeClock
) -> None:
    letter = make_letter()
    store.add(letter)
    store.claim(letter.id, owner="replayer-a", lease=LEASE)
    clock.advance(LEASE * 10)
    assert store.resolve(letter.id, owner="replayer-a") is True
    assert store.count() == 0


def test_release_frees_the_letter_for_another_owner(
    every_store: DeadLetterStore, clock: FakeClock
) -> None:
    letter = make_letter()
    every_store.add(letter)
    every_store.claim(letter.id, owner="replayer-a", lease=LEASE)

    every_store.release(letter.id, owner="replayer-a")

    assert every_store.get(letter.id) == letter
    # Released means nobody holds it: the old owner can neither resolve nor release again.
    assert every_store.resolve(letter.id, owner="replayer-a") is False
    with pytest.raises(DeadLetterStoreError, match="nobody holds it"):
        every_store.release(letter.id, owner="replayer-a")
    assert every_store.purge(letter_ids=[uuid7()], handler=letter.handler) == 0
    assert every_store.claim(letter.id, owner="replayer-b", lease=LEASE) == letter
    assert every_store.resolve(letter.id, owner="replayer-a") is False


def test_release_by_a_non_owner_raises_and_keeps_the_claim(store: DeadLetterStore) -> None:
    letter = make_letter()
    store.add(letter)
    with pytest.raises(DeadLetterStoreError, match="nobody holds it") as unclaimed:
        store.release(letter.id, owner="replayer-a")
    assert not isinstance(unclaimed.value, DeadLetterNotFoundError)

    store.claim(letter.id, owner="replayer-a", lease=LEASE)
    stranger = attrs.evolve(letter, message="a stranger's error", attempts=99)
    with pytest.raises(DeadLetterStoreError, match="'replayer-a' holds it") as caught:
        store.release(letter.id, owner="replayer-b", updated=stranger)
    assert not isinstance(caught.value, DeadLetterNotFoundError)

    assert store.get(letter.id) == letter
    assert store.claim(letter.id, owner="replayer-b", lease=LEASE) is None
    assert store.resolve(letter.id, owner="replayer-a") is True


def test_release_of_an_unknown_id_raises_not_found(store: DeadLetterStore) -> None:
    with pytest.raises(DeadLetterNotFoundError):
        store.release(uuid7(), owner="replayer-a")


def test_release_with_an_update_stores_the_new_failure(
    every_store: DeadLetterStore, clock: FakeClock
) -> None:
    letter = make_letter(failed_at=T0)
    later = make_letter(failed_at=T0 + timedelta(minutes=1))
    every_store.add(letter)
    every_store.add(later)
    every_store.claim(letter.id, owner="replayer-a", lease=LEASE)
    failed_at = T0 + timedelta(hours=1, microseconds=7)
    updated = attrs.evolve(
        letter,
        error_type="billing.gateway.GatewayTimeout",
        message="gateway timed out after 30 s — noch einmal",
        traceback="Traceback (most recent call last):\n  ...\nGatewayTimeout\n",
        attempts=letter.attempts + 3,
        last_failed_at=failed_at,
        # Fields a replay does not change are not taken from the update.
        handler="someone.else",
        payload=b"{}",
    )

    every_store.release(letter.id, owner="replayer-a", updated=updated)

    got = every_store.get(letter.id)
    assert got == attrs.evolve(
        letter,
        error_type="billing.gateway.GatewayTimeout",
        message="gateway timed out after 30 s — noch einmal",
        traceback="Traceback (most recent call last):\n  ...\nGatewayTimeout\n",
        attempts=6,
        last_failed_at=failed_at,
    )
    assert got.first_failed_at == letter.first_failed_at
    assert got.payload == letter.payload
    # The new failure time moves the letter in the order and in the filters.
    assert ids(every_store.list()) == [later.id, letter.id]
    assert ids(every_store.list(since=failed_at)) == [letter.id]
    assert every_store.claim(letter.id, owner="replayer-b", lease=LEASE) == got


def test_release_with_an_update_of_another_letter_is_refused(store: DeadLetterStore) -> None:
    letter, other = make_letter(), make_letter()
    store.add(letter)
    store.add(other)
    store.claim(letter.id, owner="replayer-a", lease=LEASE)
    with pytest.raises(ConfigurationError, match="same letter"):
        store.release(letter.id, owner="replayer-a", updated=other)
    assert store.claim(letter.id, owner="replayer-b", lease=LEASE) is None
    store.release(letter.id, owner="replayer-a")


# -- purge -------------------------------------------------------------------------------


def test_purge_by_ids(store: DeadLetterStore, mixed: dict[str, DeadLetter]) -> None:
    chosen = [mixed["charge_paid_10"].id, mixed["mail_placed_60"].id, uuid7()]
    assert store.purge(letter_ids=iter(chosen)) == 2
    assert keys(mixed, store.list()) == [
        "charge_placed_0",
        "mail_placed_20",
        "mail_paid_30",
        "charge_placed_40",
    ]
    assert store.purge(letter_ids=[]) == 0
    assert store.count() == 4


def test_purge_by_ids_and_filters_takes_both(
    store: DeadLetterStore, mixed: dict[str, DeadLetter]
) -> None:
    chosen = [mixed["charge_paid_10"].id, mixed["mail_paid_30"].id, mixed["mail_placed_60"].id]
    assert store.purge(letter_ids=chosen, handler="mail.confirm", event_name="order.paid") == 1
    assert "mail_paid_30" not in keys(mixed, store.list())
    assert store.count() == 5


@pytest.mark.parametrize(
    ("filters", "kept"),
    [
        ({"handler": "mail.confirm"}, ["charge_placed_0", "charge_paid_10", "charge_placed_40"]),
        ({"event_name": "order.placed"}, ["charge_paid_10", "mail_paid_30"]),
        (
            {"until": T0 + timedelta(minutes=30)},
            ["charge_placed_40", "mail_placed_60"],
        ),
        (
            {"since": T0 + timedelta(minutes=10), "until": T0 + timedelta(minutes=20)},
            ["charge_placed_0", "mail_paid_30", "charge_placed_40", "mail_placed_60"],
        ),
        (
            {"handler": "billing.charge_card", "since": T0 + timedelta(minutes=5)},
            ["charge_placed_0", "mail_placed_20", "mail_paid_30", "mail_placed_60"],
        ),
    ],
)
def test_purge_by_filters(
    store: DeadLetterStore,
    mixed: dict[str, DeadLetter],
    filters: dict[str, object],
    kept: list[str],
) -> None:
    assert store.purge(**filters) == 6 - len(kept)  # type: ignore[arg-type]
    assert keys(mixed, store.list()) == kept


def test_purge_all(store: DeadLetterStore, mixed: dict[str, DeadLetter]) -> None:
    assert store.purge(all=True) == 6
    assert store.list() == []
    assert store.purge(all=True) == 0


def test_purge_never_deletes_a_letter_under_a_live_claim(
    every_store: DeadLetterStore, clock: FakeClock
) -> None:
    held, expired, free = make_letter(), make_letter(), make_letter()
    for letter in (held, expired, free):
        every_store.add(letter)
    every_store.claim(expired.id, owner="replayer-dead", lease=1)
    clock.advance(2)
    every_store.claim(held.id, owner="replayer-a", lease=LEASE)

    assert every_store.purge(all=True) == 2
    assert ids(every_store.list()) == [held.id]
    assert every_store.purge(letter_ids=[held.id]) == 0
    assert every_store.purge(handler=held.handler) == 0
    assert every_store.resolve(held.id, owner="replayer-a") is True


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"letter_ids": None},
        {"all": False},
        {"all": True, "handler": "mail.confirm"},
        {"all": True, "letter_ids": []},
        {"all": "yes"},
        {"letter_ids": "0190a7e4-0000-7000-8000-000000000000"},
        {"letter_ids": ["0190a7e4-0000-7000-8000-000000000000"]},
        {"letter_ids": 42},
    ],
)
def test_purge_must_be_told_which_letters(
    store: DeadLetterStore, mixed: dict[str, DeadLetter], arguments: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        store.purge(**arguments)  # type: ignore[arg-type]
    assert store.count() == 6


def test_purge_without_arguments_says_how_to_choose(store: DeadLetterStore) -> None:
    store.add(make_letter())
    with pytest.raises(ConfigurationError, match=r"ids, filters, or purge\(all=True\)"):
        store.purge()
    assert store.count() == 1


def test_purge_by_many_ids(store: DeadLetterStore) -> None:
    letters = [make_letter(failed_at=T0 + timedelta(seconds=i)) for i in range(1200)]
    for letter in letters:
        store.add(letter)
    assert store.purge(letter_ids=[letter.id for letter in letters[:1100]]) == 1100
    assert ids(store.list()) == ids(letters[1100:])


# -- closing -----------------------------------------------------------------------------


def test_a_closed_store_refuses_everything(every_store: DeadLetterStore) -> None:
    letter = make_letter()
    every_store.add(letter)
    every_store.close()
    every_store.close()  # twice is fine

    operations: list[Callable[[], object]] = [
        lambda: every_store.add(make_letter()),
        lambda: every_store.get(letter.id),
        every_store.list,
        every_store.count,
        lambda: every_store.claim(letter.id, owner="replayer-a", lease=LEASE),
        lambda: every_store.resolve(letter.id, owner="replayer-a"),
        lambda: every_store.release(letter.id, owner="replayer-a"),
        lambda: every_store.purge(all=True),
    ]
    for operation in operations:
        with pytest.raises(DeadLetterStoreError, match="closed") as caught:
            operation()
        assert not isinstance(caught.value, DeadLetterNotFoundError)


# -- SQLite only -------------------------------------------------------------------------


def test_letters_and_claims_survive_a_reopen(db_path: Path, clock: FakeClock) -> None:
    letters = [make_letter(failed_at=T0 + timedelta(minutes=i)) for i in range(3)]
    first = SQLiteDeadLetterStore(db_path, clock=clock)
    for letter in letters:
        first.add(letter)
    first.claim(letters[1].id, owner="replayer-a", lease=LEASE)
    first.close()

    second = SQLiteDeadLetterStore(str(db_path), clock=clock)
    try:
        assert second.list() == letters
        assert second.claim(letters[1].id, owner="replayer-b", lease=LEASE) is None
        assert second.resolve(letters[1].id, owner="replayer-a") is True
        assert ids(second.list()) == [letters[0].id, letters[2].id]
    finally:
        second.close()


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()


def test_schema_sql_is_what_the_store_creates(db_path: Path, tmp_path: Path) -> None:
    SQLiteDeadLetterStore(db_path).close()
    ddl = SQLiteDeadLetterStore.schema_sql()
    assert "CREATE TABLE IF NOT EXISTS eventbus_dead_letters" in ddl

    with (
        closing(sqlite3.connect(db_path)) as created,
        closing(sqlite3.connect(":memory:")) as migrated,
    ):
        migrated.executescript(ddl)
        migrated.executescript(ddl)  # idempotent
        created_schema = _schema(created)
        assert created_schema == _schema(migrated)
        assert [(kind, name) for kind, name, _, _ in created_schema] == [
            ("index", "eventbus_dead_letters_event_name"),
            ("index", "eventbus_dead_letters_handler"),
            ("index", "eventbus_dead_letters_last_failed"),
            ("table", "eventbus_dead_letters"),
        ]
        columns = {
            row[1]: (row[2], row[3])
            for row in created.execute("PRAGMA table_info(eventbus_dead_letters)")
        }
        assert columns["id"] == ("TEXT", 1)
        assert columns["payload"] == ("BLOB", 1)
        assert columns["last_failed_ts"] == ("REAL", 1)
        assert columns["claim_owner"] == ("TEXT", 0)
        assert columns["claim_until"] == ("REAL", 0)
        assert created.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    created.close()
    migrated.close()

    # A database migrated from the DDL is opened as it is.
    premade = tmp_path / "premade.db"
    with closing(sqlite3.connect(premade)) as conn:
        conn.executescript(ddl)
    store = SQLiteDeadLetterStore(premade)
    try:
        letter = make_letter()
        store.add(letter)
        assert store.get(letter.id) == letter
    finally:
        store.close()


def test_rows_are_stored_readably(db_path: Path) -> None:
    store = SQLiteDeadLetterStore(db_path)
    letter = make_letter(
        failed_at=datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    )
    store.add(letter)
    store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        row = conn.execute(
            "SELECT id, envelope_id, last_failed_at, last_failed_ts, typeof(payload), "
            "claim_owner, claim_until FROM eventbus_dead_letters"
        ).fetchone()
    assert row == (
        str(letter.id),
        str(letter.envelope_id),
        "2024-05-01T12:00:00.000005+00:00",
        1714564800.000005,
        "blob",
        None,
        None,
    )


def test_a_table_without_the_needed_columns_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("CREATE TABLE eventbus_dead_letters (id TEXT PRIMARY KEY)")
    with pytest.raises(DeadLetterStoreError, match="claim_owner"):
        SQLiteDeadLetterStore(db_path)


def test_sqlite_errors_name_the_operation_and_chain_the_cause(db_path: Path) -> None:
    store = SQLiteDeadLetterStore(db_path)
    try:
        store.add(make_letter())
        with closing(sqlite3.connect(db_path)) as saboteur, saboteur:
            saboteur.execute("DROP TABLE eventbus_dead_letters")
        with pytest.raises(DeadLetterStoreError, match="list failed") as listing:
            store.list()
        assert isinstance(listing.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(DeadLetterStoreError, match="add failed") as adding:
            store.add(make_letter())
        assert isinstance(adding.value.__cause__, sqlite3.OperationalError)
    finally:
        store.close()


def test_a_writer_waits_for_the_lock_then_fails_cleanly(db_path: Path) -> None:
    store = SQLiteDeadLetterStore(db_path, timeout=0.05)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DeadLetterStoreError, match="claim failed") as caught:
            store.claim(uuid7(), owner="replayer-a", lease=LEASE)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        holder.execute("ROLLBACK")
        letter = make_letter()
        store.add(letter)  # the store is still usable
        assert store.claim(letter.id, owner="replayer-a", lease=LEASE) == letter
    finally:
        holder.close()
        store.close()


@pytest.mark.parametrize("kind", ["under a regular file", "a directory", "not a database"])
def test_an_unusable_path_is_refused(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    if kind == "under a regular file":
        blocker.write_text("I am a file")
        path = blocker / "sub" / "dead_letters.db"
    elif kind == "a directory":
        path = tmp_path / "a_directory"
        path.mkdir()
    else:
        path = tmp_path / "notes.db"
        path.write_bytes(b"these are plain notes, not a SQLite database" * 100)
    with pytest.raises(DeadLetterStoreError, match=str(path)) as caught:
        SQLiteDeadLetterStore(path)
    assert caught.value.__cause__ is not None or kind == "a directory"


def test_memory_databases_are_separate() -> None:
    first, second = SQLiteDeadLetterStore(":memory:"), SQLiteDeadLetterStore(":memory:")
    try:
        first.add(make_letter())
        assert first.count() == 1
        assert second.count() == 0
        assert not list(Path.cwd().glob(":memory:*"))
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("sharing", ["one store", "a store per thread"])
def test_two_threads_racing_for_a_claim_have_one_winner(db_path: Path, sharing: str) -> None:
    rounds = 50
    letters = [make_letter(failed_at=T0 + timedelta(seconds=i)) for i in range(rounds)]
    stores = [SQLiteDeadLetterStore(db_path, timeout=10)]
    stores.append(
        stores[0] if sharing == "one store" else SQLiteDeadLetterStore(db_path, timeout=10)
    )
    for letter in letters:
        stores[0].add(letter)
    barrier = threading.Barrier(2)
    won: dict[str, list[uuid.UUID]] = {"thread-a": [], "thread-b": []}
    errors: list[BaseException] = []

    def race(owner: str, store: SQLiteDeadLetterStore) -> None:
        try:
            for letter in letters:
                barrier.wait(timeout=10)
                if store.claim(letter.id, owner=owner, lease=600) is not None:
                    won[owner].append(letter.id)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=race, args=("thread-a", stores[0])),
        threading.Thread(target=race, args=("thread-b", stores[1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for store in {id(s): s for s in stores}.values():
        store.close()

    assert errors == []
    assert not set(won["thread-a"]) & set(won["thread-b"])
    assert sorted(won["thread-a"] + won["thread-b"]) == sorted(ids(letters))


def test_writers_on_one_file_wait_for_each_other(db_path: Path) -> None:
    """Reads then writes in one transaction (add, release) must not fail as busy."""
    stores = [SQLiteDeadLetterStore(db_path, timeout=10) for _ in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def write(store: SQLiteDeadLetterStore, owner: str) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(100):
                letter = make_letter()
                store.add(letter)
                store.claim(letter.id, owner=owner, lease=LEASE)
                store.release(letter.id, owner=owner, updated=attrs.evolve(letter, attempts=9))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(store, f"writer-{n}"))
        for n, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        assert stores[0].count() == 300
        assert {letter.attempts for letter in stores[0].list()} == {9}
    finally:
        for store in stores:
            store.close()


_CLAIMER = """
import json, sys, time, uuid
from eventbus.deadletters import SQLiteDeadLetterStore

path, owner = sys.argv[1], sys.argv[2]
letter_ids = [uuid.UUID(text) for text in json.loads(sys.argv[3])]
store = SQLiteDeadLetterStore(path, timeout=30)
print("ready", flush=True)
sys.stdin.readline()
won = []
started = time.time()
for letter_id in letter_ids:
    if store.claim(letter_id, owner=owner, lease=600) is not None:
        won.append(str(letter_id))
    time.sleep(0.0005)  # a replay's work: lets the other process in between claims
ended = time.time()
store.close()
print(json.dumps({"won": won, "started": started, "ended": ended}), flush=True)
"""


def test_two_processes_racing_for_claims_split_the_letters(db_path: Path) -> None:
    letters = [make_letter(failed_at=T0 + timedelta(seconds=i)) for i in range(300)]
    store = SQLiteDeadLetterStore(db_path)
    for letter in letters:
        store.add(letter)
    store.close()
    argument = json.dumps([str(letter.id) for letter in letters])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(db_path), owner, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for owner in ("process-a", "process-b")
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.stderr
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [worker.communicate(timeout=60) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()

    assert [worker.returncode for worker in workers] == [0, 0], [err for _, err in results]
    reports = [json.loads(out) for out, _ in results]
    # The two processes really raced: their claiming loops overlapped in time.
    assert max(r["started"] for r in reports) < min(r["ended"] for r in reports)
    won_a, won_b = (set(report["won"]) for report in reports)
    assert not won_a & won_b
    assert won_a | won_b == {str(letter.id) for letter in letters}

    conn = sqlite3.connect(db_path)
    try:
        owners = dict(conn.execute("SELECT id, claim_owner FROM eventbus_dead_letters"))
    finally:
        conn.close()
    assert {key for key, owner in owners.items() if owner == "process-a"} == won_a
    assert {key for key, owner in owners.items() if owner == "process-b"} == won_b
