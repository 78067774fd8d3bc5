"""The ``eventbus`` command.

    eventbus catalog --app myapp.events:bus [--json]    the events and who handles them
    eventbus --version

Every command finds the application's bus with ``--app module:attribute`` (or the
``EVENTBUS_APP`` environment variable). Errors are one line on stderr and a non-zero exit:
1 when the command ran and found a problem, 2 for bad usage or an app that cannot be
loaded. A traceback means a bug in eventbus: please report it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._bus import EventBus

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad input to the command: reported as one line, exit 2."""


def load_bus(spec: str | None) -> EventBus:
    """Import ``module:attribute`` and return the EventBus it names."""
    spec = spec or os.environ.get("EVENTBUS_APP")
    if not spec:
        raise _UsageError("name the bus with --app module:attribute (or set EVENTBUS_APP)")
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise _UsageError(f"--app takes module:attribute, like myapp.events:bus; got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        # Like `python -m`, find the application's modules from the current directory.
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise _UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(target) and not isinstance(target, EventBus):
        try:
            target = target()  # an application factory
        except Exception as exc:
            raise _UsageError(f"calling {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, EventBus):
        raise _UsageError(f"{spec} is a {type(target).__name__}, not an eventbus.EventBus")
    return target


def _catalog(args: argparse.Namespace) -> int:
    bus = load_bus(args.app)
    rows: list[dict[str, Any]] = []
    for info in bus.registry:
        handlers = bus.handlers_for(info.cls)
        rows.append(
            {
                "name": info.name,
                "version": info.version,
                "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
                "handlers": [
                    {"name": h.name, "delivery": h.delivery, "async": h.is_async} for h in handlers
                ],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no events are registered")
        return EXIT_OK
    width = max(len(f"{row['name']} v{row['version']}") for row in rows)
    for row in rows:
        title = f"{row['name']} v{row['version']}"
        cells = row["handlers"]
        first = "(no handlers)" if not cells else _handler_cell(cells[0])
        print(f"{title:<{width}}  {first}")
        for handler in cells[1:]:
            print(f"{'':<{width}}  {_handler_cell(handler)}")
    return EXIT_OK


def _handler_cell(handler: dict[str, Any]) -> str:
    kind = "async " if handler["async"] else ""
    return f"{handler['name']}  [{kind}{handler['delivery']}]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"eventbus: {message} (see eventbus --help)\n")


def _parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415 - avoids an import cycle at module load

    parser = _Parser(prog="eventbus", description="Inspect and operate an eventbus application.")
    parser.add_argument("--version", action="version", version=f"eventbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    catalog = commands.add_parser("catalog", help="list the registered events and their handlers")
    catalog.add_argument("--app", help="the bus, as module:attribute (default: $EVENTBUS_APP)")
    catalog.add_argument("--json", action="store_true", help="machine-readable output")
    catalog.set_defaults(run=_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except _UsageError as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # one line, never a traceback, for failures users can act on
        from .errors import EventBusError  # noqa: PLC0415

        if not isinstance(exc, EventBusError):
            raise
        print(f"eventbus: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
