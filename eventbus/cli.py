"""The ``eventbus`` command.

    eventbus catalog --app myapp.events:bus [--json]    the events and who handles them
    eventbus dlq list [filters] [--limit N] [--json]    the dead letters, oldest first
    eventbus dlq show ID [--json]                       one dead letter in full
    eventbus dlq export ID [--raw]                      one dead letter whole (--raw: its bytes)
    eventbus dlq replay (IDS... | --all | filters) [--json]
    eventbus dlq purge (IDS... | --all | filters) [--yes] [--json]
    eventbus relay                                      deliver the outbox, until SIGTERM
    eventbus worker [--transport-url URL] [--group G]   consume the transport, until SIGTERM
    eventbus outbox init [--sql] | status [--json]      set up and watch the outbox
    eventbus --version

Filters: --handler NAME, --event NAME, --since WHEN, --until WHEN (ISO 8601 dates or
datetimes, bounding the last failure, inclusive; a value without an offset is UTC).

Every command finds the application's bus with ``--app module:attribute`` (or the
``EVENTBUS_APP`` environment variable). Errors are one line on stderr and a non-zero exit:
1 when the command ran and found a problem, 2 for bad usage or an app that cannot be
loaded. A traceback means a bug in eventbus: please report it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._cli_app import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    Parser,
    UsageError,
    app_options,
    close_loaded,
    load_bus,
)
from ._cli_dlq import add_dlq
from ._cli_outbox import add_outbox
from ._cli_worker import add_worker
from ._redact import redact

__all__ = ["load_bus", "main"]


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


def _parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415 - avoids an import cycle at module load

    parser = Parser(prog="eventbus", description="Inspect and operate an eventbus application.")
    parser.add_argument("--version", action="version", version=f"eventbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    catalog = commands.add_parser(
        "catalog", parents=[app_options()], help="list the registered events and their handlers"
    )
    catalog.set_defaults(run=_catalog)
    add_dlq(commands)
    add_outbox(commands)
    add_worker(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        try:
            code: int = args.run(args)
        finally:
            close_loaded()
    except UsageError as exc:
        print(f"eventbus: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("eventbus: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`eventbus dlq list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PROBLEM
    except Exception as exc:  # one line, never a traceback, for failures users can act on
        from .errors import EventBusError  # noqa: PLC0415

        if not isinstance(exc, EventBusError):
            raise
        print(f"eventbus: {redact(str(exc))}", file=sys.stderr)
        return EXIT_PROBLEM
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
