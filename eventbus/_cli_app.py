"""What every ``eventbus`` command shares: finding the bus, exit codes, usage errors."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ._bus import EventBus
from .errors import DeadLetterStoreError, OutboxError

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "Parser",
    "UsageError",
    "app_options",
    "close_loaded",
    "load_bus",
    "serve_until_signalled",
]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input to the command: reported as one line, exit 2."""


def load_bus(spec: str | None) -> EventBus:
    """Import ``module:attribute`` and return the EventBus it names."""
    spec = spec or os.environ.get("EVENTBUS_APP")
    if not spec:
        raise UsageError("name the bus with --app module:attribute (or set EVENTBUS_APP)")
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--app takes module:attribute, like myapp.events:bus; got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        # Like `python -m`, find the application's modules from the current directory.
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except (DeadLetterStoreError, OutboxError) as exc:  # the app is fine, its database not: 1
        raise type(exc)(f"importing {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(target) and not isinstance(target, EventBus):
        try:
            target = target()  # an application factory
        except (DeadLetterStoreError, OutboxError) as exc:
            raise type(exc)(f"calling {spec}: {exc}") from exc
        except Exception as exc:
            raise UsageError(f"calling {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, EventBus):
        raise UsageError(f"{spec} is a {type(target).__name__}, not an eventbus.EventBus")
    _loaded.append(target)
    return target


_loaded: list[EventBus] = []
"""The buses this command loaded, for ``close_loaded``."""


def close_loaded() -> None:
    """Close every bus the command loaded, then its outbox and dead-letter store.

    The command is the last user of the application it imported: nothing it opened is
    left for the garbage collector (Python 3.13 warns about a sqlite3 connection
    collected open). A store that fails to close is reported in one line.
    """
    while _loaded:
        bus = _loaded.pop()
        for what, close in (
            ("the bus", bus.close),
            ("the outbox", None if bus.outbox is None else bus.outbox.close),
            ("the dead-letter store", bus.dead_letters.close),
        ):
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # reported; the command's result stands
                print(f"eventbus: closing {what}: {exc}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"eventbus: {message} (see eventbus --help)\n")


def app_options() -> Parser:
    """The --app and --json options, as a parent parser."""
    app = Parser(add_help=False)
    app.add_argument("--app", help="the bus, as module:attribute (default: $EVENTBUS_APP)")
    app.add_argument("--json", action="store_true", help="machine-readable output")
    return app


def serve_until_signalled(bus: EventBus, *, stopping: str, started: Callable[[], str]) -> int:
    """Start ``bus``, print ``started()``, run until SIGTERM or SIGINT, then close it
    (which finishes what is in hand) and return EXIT_OK: ``relay`` and ``worker``."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"eventbus: {name}: {stopping}", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    bus.start()
    print(f"eventbus: {started()}; stop with SIGTERM", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    bus.close()
    return EXIT_OK
