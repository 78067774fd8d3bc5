"""``eventbus relay`` and ``eventbus outbox``: run the relay, set up and watch the outbox."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._bus import EventBus
from ._cli_app import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    app_options,
    load_bus,
    serve_until_signalled,
)
from .typing import SupportsCreateSchema, SupportsSchemaSQL

__all__ = ["add_outbox"]


def _outbox_bus(args: argparse.Namespace) -> EventBus:
    bus = load_bus(args.app)
    if bus.outbox is None:
        raise UsageError(
            f"{args.app or 'the bus'} has no outbox: build it with EventBus(outbox=...), "
            "e.g. SQLiteOutbox(path) or eventbus_contrib.sqlalchemy.SQLAlchemyOutbox(engine)"
        )
    return bus


def _relay(args: argparse.Namespace) -> int:
    """Relay until SIGTERM or SIGINT, then finish the batch in hand and exit 0."""
    bus = _outbox_bus(args)
    bus._life.relay_here()  # the app's bus says relay=False for its web processes
    return serve_until_signalled(
        bus, stopping="finishing what is in flight", started=lambda: f"relaying {bus.outbox!r}"
    )


def _status(args: argparse.Namespace) -> int:
    bus = _outbox_bus(args)
    outbox = bus.outbox
    assert outbox is not None
    status = outbox.status()
    dead = bus.dead_letters.count()
    report: dict[str, Any] = {
        "pending": status.pending,
        "in_flight": status.in_flight,
        "delayed": status.delayed,
        "oldest_age_seconds": status.oldest_age,
        "dead_lettered": dead,
        "by_name": status.by_name,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    age = "-" if status.oldest_age is None else f"{status.oldest_age:.1f}s"
    print(f"pending       {status.pending}")
    print(f"  in flight   {status.in_flight}")
    print(f"  delayed     {status.delayed}   (waiting for a retry time)")
    print(f"oldest age    {age}")
    print(f"dead letters  {dead}")
    if status.by_name:
        print("by event")
        width = max(len(name) for name in status.by_name)
        for name, count in status.by_name.items():
            print(f"  {name:<{width}}  {count}")
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    if args.sql and not (args.app or os.environ.get("EVENTBUS_APP")):
        from .outbox import SQLiteOutbox  # noqa: PLC0415

        print(SQLiteOutbox.schema_sql().strip())  # no app: the embedded default's DDL
        return EXIT_OK
    bus = _outbox_bus(args)
    outbox = bus.outbox
    assert outbox is not None  # _outbox_bus refuses a bus without one
    if args.sql:
        if not isinstance(outbox, SupportsSchemaSQL):
            print(f"eventbus: {outbox!r} cannot print its DDL", file=sys.stderr)
            return EXIT_USAGE
        print(str(outbox.schema_sql()).strip())
        return EXIT_OK
    if not isinstance(outbox, SupportsCreateSchema):
        print(f"eventbus: {outbox!r} does not create its own schema", file=sys.stderr)
        return EXIT_USAGE
    outbox.create_schema()
    print(f"outbox tables ready in {outbox!r}")
    return EXIT_OK


def add_outbox(commands: Any) -> None:
    app = app_options()
    relay = commands.add_parser(
        "relay",
        parents=[app],
        help="deliver the outbox in a process of its own, until SIGTERM",
    )
    relay.set_defaults(run=_relay)
    outbox = commands.add_parser("outbox", help="set up and watch the transactional outbox")
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    init = actions.add_parser("init", parents=[app], help="create the outbox and inbox tables")
    init.add_argument("--sql", action="store_true", help="print the SQLite DDL instead")
    init.set_defaults(run=_init)
    status = actions.add_parser(
        "status", parents=[app], help="pending, in flight, oldest age, dead-lettered, per event"
    )
    status.set_defaults(run=_status)
