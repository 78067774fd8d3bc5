"""Relays woken by commits in other processes: PostgreSQL ``LISTEN`` on a connection of
the listener's own.

Every outbox write on PostgreSQL carries a ``pg_notify`` (``_sql.py``), which PostgreSQL
sends when, and only if, its transaction commits. A thread holds a connection made from
``DATABASES[alias]`` (a Django connection of its own, never a request's), LISTENs, and
wakes the relay on each notification. It is only an early wake-up: notifications are
lost while nobody listens and do not pass PgBouncer in transaction mode, so the relay
polls all the same (``poll_interval``). A connection that breaks is opened again after a
pause, polling carrying on meanwhile.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from django.db import connections

from ._core import logger

__all__ = ["listen"]

_LOOK: Final = 0.5
"""Seconds between two looks at whether the listener was told to stop."""


def listen(
    alias: str, channel: str, wake: Callable[[], None], *, pause: float
) -> Callable[[], None]:
    """Call ``wake`` (from a thread of its own) on every notification on ``channel`` in
    the database ``alias``; returns how to stop, which waits for the connection to close."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_listen,
        args=(alias, channel, wake, stop, pause),
        name="eventbus-django-listen",
        daemon=True,
    )
    thread.start()

    def stop_listening() -> None:
        # Wait for the listener to close its connection (it looks every _LOOK seconds), so
        # nothing is left open when the relay, and then the application, stops.
        stop.set()
        thread.join(timeout=5)

    return stop_listening


def _listen(
    alias: str, channel: str, wake: Callable[[], None], stop: threading.Event, pause: float
) -> None:
    while not stop.is_set():
        wrapper: Any = None
        try:
            wrapper = connections.create_connection(alias)
            wrapper.ensure_connection()
            if not wrapper.get_autocommit():  # AUTOCOMMIT=False in DATABASES
                wrapper.set_autocommit(True)
            with wrapper.cursor() as cursor:
                cursor.execute(f'LISTEN "{channel}"')  # a constant of ours
            driver = wrapper.connection
            while not stop.is_set():
                if _notified(driver):
                    wake()
        except Exception:
            logger.warning(
                "the outbox listener on the database %r lost its connection; polling meanwhile",
                alias,
                exc_info=True,
            )
            stop.wait(pause)
        finally:
            if wrapper is not None:
                with suppress(Exception):
                    wrapper.close()


def _notified(driver: Any) -> bool:
    """Whether a notification came within ``_LOOK`` seconds, on psycopg (3) or psycopg2
    (Django takes either)."""
    notifies = driver.notifies
    if callable(notifies):  # psycopg 3.2: a generator that waits
        return any(True for _ in notifies(timeout=_LOOK, stop_after=1))
    readable, _, _ = select.select([driver], [], [], _LOOK)  # psycopg2: poll the socket
    if readable:
        driver.poll()
    came = bool(driver.notifies)
    driver.notifies.clear()
    return came
