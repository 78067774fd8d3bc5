"""``eventbus worker``: consume the transport for the application's durable handlers."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._cli_app import UsageError, app_options, load_bus, serve_until_signalled

__all__ = ["add_worker"]


def _worker(args: argparse.Namespace) -> int:
    """Work until SIGTERM or SIGINT, then finish the messages in hand and exit 0.

    ``--transport-url`` and ``--group`` are the settings ``EVENTBUS_TRANSPORT_URL`` and
    ``EVENTBUS_GROUP`` under another spelling: they are set before the application is
    imported, so the bus it builds picks them up (unless its code passes them itself).
    """
    if args.transport_url:
        os.environ["EVENTBUS_TRANSPORT_URL"] = args.transport_url
    if args.group:
        os.environ["EVENTBUS_GROUP"] = args.group
    os.environ["EVENTBUS_WORKER"] = "true"  # this process is here to consume
    bus = load_bus(args.app)
    if bus.transport is None:
        raise UsageError(
            f"{args.app or 'the bus'} has no transport: set EVENTBUS_TRANSPORT_URL (or "
            "--transport-url, or transport_url in [tool.eventbus] of pyproject.toml), "
            "e.g. redis://127.0.0.1:6379/0"
        )

    def started() -> str:
        link = bus._link
        assert link is not None
        if link.worker is None:
            raise UsageError(
                f"{args.app or 'the bus'} was built with worker=False: this process cannot "
                "consume; drop the argument (the command sets EVENTBUS_WORKER=true)"
            )
        topics = link.worker.topics()
        return f"worker for group {link.group!r} on {bus.transport!r}, {len(topics)} event names"

    return serve_until_signalled(bus, stopping="finishing the messages in hand", started=started)


def add_worker(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        parents=[app_options()],
        help="run the durable handlers on what the transport delivers, until SIGTERM",
    )
    worker.add_argument("--transport-url", help="overrides EVENTBUS_TRANSPORT_URL")
    worker.add_argument("--group", help="the consumer group (overrides EVENTBUS_GROUP)")
    worker.set_defaults(run=_worker)
