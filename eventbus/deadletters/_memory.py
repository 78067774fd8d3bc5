"""MemoryDeadLetterStore: dead letters in a dict, for tests and single-process apps.

The argument checks that every store shares live here too (``_checked_*``): the SQLite
store imports them, so both refuse the same inputs with the same errors.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import attrs

from .._records import DeadLetter
from ..errors import ConfigurationError, DeadLetterNotFoundError, DeadLetterStoreError

__all__ = ["MemoryDeadLetterStore"]

_TEXT_FIELDS = ("event_name", "handler", "error_type", "message", "traceback")


@attrs.frozen
class _Selection:
    """Validated ``handler``/``event_name``/``since``/``until`` filters (all optional)."""

    handler: str | None = None
    event_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return self == _Selection()

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.handler is None or letter.handler == self.handler)
            and (self.event_name is None or letter.event_name == self.event_name)
            and (self.since is None or letter.last_failed_at >= self.since)
            and (self.until is None or letter.last_failed_at <= self.until)
        )


def _checked_selection(
    handler: str | None, event_name: str | None, since: datetime | None, until: datetime | None
) -> _Selection:
    for name, value in (("handler", handler), ("event_name", event_name)):
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a str or None, got {value!r}")
    return _Selection(
        handler=handler,
        event_name=event_name,
        since=None if since is None else _aware(since, "since"),
        until=None if until is None else _aware(until, "until"),
    )


def _aware(value: object, name: str) -> datetime:
    """``value`` in UTC; it must be a timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{name} must be a timezone-aware datetime, got {value!r}")
    if value.utcoffset() is None:
        raise ConfigurationError(
            f"{name} must be timezone-aware, got the naive datetime {value!r}; "
            "use e.g. datetime.now(UTC)"
        )
    return value.astimezone(UTC)


def _checked_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigurationError(f"limit must be a positive int or None, got {limit!r}")
    return limit


def _checked_id(letter_id: object, name: str = "letter_id") -> uuid.UUID:
    if not isinstance(letter_id, uuid.UUID):
        raise ConfigurationError(f"{name} must be a uuid.UUID, got {letter_id!r}")
    return letter_id


def _checked_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner:
        raise ConfigurationError(f"owner must be a non-empty str, got {owner!r}")
    return owner


def _checked_lease(lease: object) -> float:
    seconds = math.nan
    if isinstance(lease, int | float) and not isinstance(lease, bool):
        with contextlib.suppress(OverflowError):
            seconds = float(lease)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"lease must be a finite number of seconds > 0, got {lease!r}")
    return seconds


def _checked_letter(letter: object) -> DeadLetter:
    """``letter`` with its datetimes in UTC, once its fields have the declared types."""
    if not isinstance(letter, DeadLetter):
        raise ConfigurationError(f"expected a DeadLetter, got {letter!r}")
    for name in ("id", "envelope_id"):
        _checked_id(getattr(letter, name), f"DeadLetter.{name}")
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(letter, name), str):
            raise ConfigurationError(
                f"DeadLetter.{name} must be a str, got {getattr(letter, name)!r}"
            )
    if isinstance(letter.attempts, bool) or not isinstance(letter.attempts, int):
        raise ConfigurationError(f"DeadLetter.attempts must be an int, got {letter.attempts!r}")
    if not isinstance(letter.payload, bytes | bytearray | memoryview):
        raise ConfigurationError(
            f"DeadLetter.payload must be bytes, got {type(letter.payload).__name__}"
        )
    first = _aware(letter.first_failed_at, "DeadLetter.first_failed_at")
    last = _aware(letter.last_failed_at, "DeadLetter.last_failed_at")
    payload = bytes(letter.payload)
    if (
        first is letter.first_failed_at
        and last is letter.last_failed_at
        and payload is letter.payload
    ):
        return letter
    return attrs.evolve(letter, first_failed_at=first, last_failed_at=last, payload=payload)


def _checked_update(letter_id: uuid.UUID, updated: object) -> DeadLetter:
    letter = _checked_letter(updated)
    if letter.id != letter_id:
        raise ConfigurationError(
            f"release(updated=...) must be the same letter: got id {letter.id}, "
            f"releasing {letter_id}"
        )
    return letter


def _checked_purge(
    letter_ids: Iterable[uuid.UUID] | None, selection: _Selection, *, everything: bool
) -> frozenset[uuid.UUID] | None:
    """The ids to purge (None: no id list), once the caller said which letters."""
    if not isinstance(everything, bool):
        raise ConfigurationError(f"all must be True or False, got {everything!r}")
    if everything:
        if letter_ids is not None or not selection.empty:
            raise ConfigurationError(
                "purge(all=True) deletes every unclaimed letter: "
                "do not combine it with ids or filters"
            )
        return None
    if letter_ids is None:
        if selection.empty:
            raise ConfigurationError(
                "purge() with no arguments deletes nothing: say which letters: ids, "
                "filters, or purge(all=True)"
            )
        return None
    if isinstance(letter_ids, str | bytes | uuid.UUID):
        raise ConfigurationError(f"letter_ids must be an iterable of uuid.UUID, got {letter_ids!r}")
    try:
        ids = builtins.list(letter_ids)
    except TypeError:
        raise ConfigurationError(
            f"letter_ids must be an iterable of uuid.UUID, got {letter_ids!r}"
        ) from None
    return frozenset(_checked_id(one, "each of letter_ids") for one in ids)


def _closed_error(store: object) -> DeadLetterStoreError:
    return DeadLetterStoreError(f"{store!r} is closed")


def _not_found(letter_id: uuid.UUID) -> DeadLetterNotFoundError:
    return DeadLetterNotFoundError(f"no dead letter has the id {letter_id}")


def _not_held(letter_id: uuid.UUID, owner: str, holder: str | None) -> DeadLetterStoreError:
    held = "nobody holds it" if holder is None else f"{holder!r} holds it"
    return DeadLetterStoreError(
        f"{owner!r} does not hold the claim on dead letter {letter_id} ({held}): "
        "its lease was lost, so it must not write the letter"
    )


@attrs.define
class _Entry:
    letter: DeadLetter
    claim_owner: str | None = None
    claim_until: float | None = None

    def claimed_at(self, now: float) -> bool:
        """Someone holds an unexpired claim (a claim expires once its time is < now)."""
        return (
            self.claim_owner is not None
            and self.claim_until is not None
            and not self.claim_until < now
        )


class MemoryDeadLetterStore:
    """Dead letters in memory, lost at exit: for tests and for apps that accept that.

    Thread-safe (one lock). Behaves exactly as ``SQLiteDeadLetterStore``: the same
    filters, order, claims and errors. Datetimes come back in UTC. ``clock`` gives the
    time in seconds that claim leases are measured against.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} letters"
        return f"<MemoryDeadLetterStore {state}>"

    def _live(self) -> dict[uuid.UUID, _Entry]:
        if self._closed:
            raise _closed_error(self)
        return self._entries

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``; a letter with the same id already kept is an error."""
        letter = _checked_letter(letter)
        with self._lock:
            entries = self._live()
            if letter.id in entries:
                raise DeadLetterStoreError(
                    f"a dead letter with the id {letter.id} is already stored; "
                    "letters are never overwritten"
                )
            entries[letter.id] = _Entry(letter)

    def get(self, letter_id: uuid.UUID) -> DeadLetter:
        """The letter with this id (DeadLetterNotFoundError if there is none)."""
        letter_id = _checked_id(letter_id)
        with self._lock:
            entry = self._live().get(letter_id)
            if entry is None:
                raise _not_found(letter_id)
            return entry.letter

    def list(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> builtins.list[DeadLetter]:
        """The letters that match, oldest ``last_failed_at`` first (then by id)."""
        selection = _checked_selection(handler, event_name, since, until)
        limit = _checked_limit(limit)
        with self._lock:
            found = [e.letter for e in self._live().values() if selection.matches(e.letter)]
        found.sort(key=lambda letter: (letter.last_failed_at, letter.id))
        return found if limit is None else found[:limit]

    def count(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many letters match."""
        selection = _checked_selection(handler, event_name, since, until)
        with self._lock:
            return sum(1 for e in self._live().values() if selection.matches(e.letter))

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None:
        """Claim the letter for ``owner`` for ``lease`` seconds and return it.

        None if another owner holds an unexpired claim. The same owner renews its claim;
        an expired claim is taken over.
        """
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        lease = _checked_lease(lease)
        with self._lock:
            entry = self._live().get(letter_id)
            if entry is None:
                raise _not_found(letter_id)
            now = self._clock()
            if entry.claim_owner != owner and entry.claimed_at(now):
                return None
            entry.claim_owner, entry.claim_until = owner, now + lease
            return entry.letter

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool:
        """Delete the letter if ``owner`` holds its claim; whether it was deleted."""
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        with self._lock:
            entries = self._live()
            entry = entries.get(letter_id)
            if entry is None or entry.claim_owner != owner:
                return False
            del entries[letter_id]
            return True

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None:
        """Give up ``owner``'s claim, storing ``updated``'s error and attempts if given.

        DeadLetterStoreError if ``owner`` does not hold the claim (any more).
        """
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        new = None if updated is None else _checked_update(letter_id, updated)
        with self._lock:
            entry = self._live().get(letter_id)
            if entry is None:
                raise _not_found(letter_id)
            if entry.claim_owner != owner:
                raise _not_held(letter_id, owner, entry.claim_owner)
            if new is not None:
                entry.letter = attrs.evolve(
                    entry.letter,
                    error_type=new.error_type,
                    message=new.message,
                    traceback=new.traceback,
                    attempts=new.attempts,
                    last_failed_at=new.last_failed_at,
                )
            entry.claim_owner = entry.claim_until = None

    def purge(
        self,
        *,
        letter_ids: Iterable[uuid.UUID] | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all: bool = False,  # noqa: A002 - purge(all=True) reads as what it does
    ) -> int:
        """Delete the letters with these ids *and* matching these filters, or ``all``.

        A letter under an unexpired claim is never deleted. Returns how many were.
        """
        selection = _checked_selection(handler, event_name, since, until)
        ids = _checked_purge(letter_ids, selection, everything=all)
        with self._lock:
            entries = self._live()
            now = self._clock()
            doomed = [
                letter_id
                for letter_id, entry in entries.items()
                if (ids is None or letter_id in ids)
                and selection.matches(entry.letter)
                and not entry.claimed_at(now)
            ]
            for letter_id in doomed:
                del entries[letter_id]
            return len(doomed)

    def close(self) -> None:
        """Drop every letter; the store can no longer be used. Closing twice is fine."""
        with self._lock:
            self._closed = True
            self._entries.clear()
