"""``manage.py eventbus ...``: the ``eventbus`` command, on the project's bus.

The same commands, options and exit codes as ``eventbus`` (its own code runs them), with
``--app`` filled in: ``manage.py eventbus relay``, ``worker``, ``dlq list``, ``outbox
status``, ``catalog``... ``manage.py eventbus --help`` lists them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError

from eventbus.cli import main

__all__ = ["Command", "run"]

APP = "eventbus_contrib.django:bus"


def run(args: list[str]) -> int:
    """Run the ``eventbus`` command line ``args`` on the project's bus; its exit code."""
    if any(arg == "--app" or arg.startswith("--app=") for arg in args):
        raise CommandError(
            "manage.py eventbus works on the project's bus (settings.EVENTBUS): drop --app"
        )
    if args[:1] == ["worker"] and any(
        arg.split("=")[0] in ("--transport-url", "--group") for arg in args
    ):
        raise CommandError(
            "manage.py eventbus worker takes its transport and group from the project's bus, "
            "made when Django started: set transport_url and group in settings.EVENTBUS, or "
            "leave them out there and set EVENTBUS_TRANSPORT_URL and EVENTBUS_GROUP in the "
            "environment of manage.py"
        )
    if args and not args[0].startswith("-"):
        args = [*args, "--app", APP]
    return main(args)


class Command(BaseCommand):  # type: ignore[misc] # Django ships no types
    help = "The eventbus command on the project's bus: relay, worker, dlq, outbox, catalog."

    def run_from_argv(self, argv: list[str]) -> NoReturn:
        """Everything after ``manage.py eventbus`` goes to the eventbus command as it is
        (its own --help, its own options); Django's options were read by manage.py."""
        try:
            code = run(_without_django_options(argv[2:]))
        except CommandError as error:
            sys.stderr.write(f"eventbus: {error}\n")
            code = 2
        sys.exit(code)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="an eventbus command line")

    def handle(self, *args: str, **options: Any) -> None:
        """``call_command("eventbus", "dlq", "list")``: a non-zero exit is a CommandError."""
        del options
        code = run(list(args))
        if code:
            raise CommandError(f"eventbus {' '.join(args)} exited with {code}", returncode=code)


def _without_django_options(args: list[str]) -> list[str]:
    """``args`` without ``--settings`` and ``--pythonpath``, which manage.py applied
    already (wherever they stand on the line)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=")[0]
        if name in ("--settings", "--pythonpath"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept
