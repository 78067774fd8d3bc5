"""Masking secrets, the public way: redact, describe_error, RedactingFilter, DeadLetter."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import pytest

from eventbus import DeadLetter, RedactingFilter, describe_error, redact, uuid7

SECRET = "s3cr3t-canary"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"postgresql://app:{SECRET}@db/app", "postgresql://app:***@db/app"),
        (f"amqp://guest:{SECRET}@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        (f"https://x.example/a?password={SECRET}&n=1", "https://x.example/a?password=***&n=1"),
        (f"?token={SECRET}", "?token=***"),
        (f"&API_KEY={SECRET};x=1", "&API_KEY=***;x=1"),
        ("nothing secret here: a=1", "nothing secret here: a=1"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_masks_url_passwords_and_secret_query_values(text: str, masked: str) -> None:
    assert redact(text) == masked
    assert redact(masked) == masked  # masking twice changes nothing


def test_describe_error_is_type_and_message_masked_and_bounded() -> None:
    error = ConnectionError(f"cannot reach postgresql://app:{SECRET}@db/app")
    assert describe_error(error) == "ConnectionError: cannot reach postgresql://app:***@db/app"
    assert describe_error(KeyError()) == "KeyError"
    long = describe_error(ValueError("x" * 5000))
    assert len(long) == 2000
    assert long.endswith("more characters cut]")
    assert len(describe_error(ValueError("x" * 5000), limit=100)) == 100


def record(msg: str, *args: object, exc: bool = False, stack: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ConnectionError(f"cannot reach postgresql://app:{SECRET}@db/app")
        except ConnectionError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("eventbus.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    if stack:
        made.stack_info = f"Stack (most recent call last):\n  connect('?password={SECRET}')"
    return made


def test_the_filter_masks_the_message_its_arguments_the_exception_and_the_stack() -> None:
    formatter = logging.Formatter()
    given = record("%s failed: %r", "charge", ValueError(f"?password={SECRET}"), exc=True)
    given.stack_info = f"Stack:\n  connect('?password={SECRET}')"

    assert RedactingFilter().filter(given) is True  # masks, never drops

    written = formatter.format(given)
    assert SECRET not in written
    assert "charge failed: ValueError('?password=***')" in written
    assert "ConnectionError: cannot reach postgresql://app:***@db/app" in written
    assert given.exc_info is None  # the exception object held the secret: dropped
    assert given.stack_info is not None
    assert SECRET not in given.stack_info


def test_the_filter_leaves_a_record_without_secrets_as_it_was() -> None:
    given = record("%s handled %d events", "charge", 3)
    RedactingFilter().filter(given)
    assert (given.msg, given.args) == ("%s handled %d events", ("charge", 3))


def test_every_eventbus_logger_masks_what_it_logs(caplog: pytest.LogCaptureFixture) -> None:
    import eventbus._delivery
    import eventbus.hooks
    import eventbus.outbox._local
    import eventbus.outbox._relay
    import eventbus.transports._forward
    import eventbus.transports._link
    import eventbus.transports._worker

    loggers = [
        eventbus._delivery.logger,
        eventbus._delivery.replay_logger,
        eventbus.hooks.logger,
        eventbus.outbox._local.logger,
        eventbus.outbox._relay.logger,
        eventbus.transports._forward.logger,
        eventbus.transports._link.logger,
        eventbus.transports._worker.logger,
    ]
    caplog.set_level(logging.DEBUG)
    for logger in loggers:
        logger.debug("reaching %s", f"postgresql://app:{SECRET}@db/app")
    assert len(caplog.records) == len(loggers)
    assert SECRET not in caplog.text


def test_a_dead_letter_masks_and_bounds_its_texts_whoever_builds_it() -> None:
    now = datetime.now(UTC)
    letter = DeadLetter(
        id=uuid7(),
        envelope_id=uuid7(),
        event_name="e",
        handler="h",
        error_type="ConnectionError",
        message=f"postgresql://app:{SECRET}@db/app " + "x" * 3000,
        traceback=f"?password={SECRET}\n" * 5000,
        attempts=1,
        first_failed_at=now,
        last_failed_at=now,
        payload=b"{}",
    )
    assert SECRET not in letter.message + letter.traceback
    assert len(letter.message) == 2000
    assert len(letter.traceback) == 20000


def test_a_raw_dead_letter_has_a_uuid7_and_no_traceback() -> None:
    letter = DeadLetter.raw(
        payload=b"\xff",
        envelope_id=uuid7(),
        event_name="e",
        handler="@worker",
        error=ValueError(f"bad bytes from amqp://u:{SECRET}@h/"),
        attempts=2,
    )
    assert letter.id.version == 7
    assert (letter.error_type, letter.traceback, letter.attempts) == ("ValueError", "", 2)
    assert letter.message == "bad bytes from amqp://u:***@h/"
    assert letter.first_failed_at == letter.last_failed_at
    with pytest.raises(TypeError, match="needs an error"):
        DeadLetter.raw(payload=b"", envelope_id=uuid7(), event_name="e", handler="h", attempts=1)
