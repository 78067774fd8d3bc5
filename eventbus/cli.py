"""The ``eventbus`` command.

    eventbus catalog --app myapp.events:bus [--json]    the events and who handles them
    eventbus dlq list [filters] [--limit N] [--json]    the dead letters, oldest first
    eventbus dlq show ID [--json]                       one dead letter in full
    eventbus dlq replay (IDS... | --all | filters) [--json]
    eventbus dlq purge (IDS... | --all | filters) [--yes] [--json]
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
import contextlib
import functools
import importlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar, cast

from ._bus import EventBus
from .deadletters import DeadLetter, MemoryDeadLetterStore
from .errors import (
    DeadLetterNotFoundError,
    DeadLetterStoreError,
    EventBusError,
    ReplayInProgressError,
)

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
    except DeadLetterStoreError as exc:  # the app is fine; its database is not: exit 1
        raise DeadLetterStoreError(f"importing {module_name!r}: {exc}") from exc
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
        except DeadLetterStoreError as exc:
            raise DeadLetterStoreError(f"calling {spec}: {exc}") from exc
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


# -- eventbus dlq ----------------------------------------------------------------------

_MEMORY_WARNING = (
    "eventbus: warning: this bus keeps dead letters in memory: a separate process sees none; "
    "configure EventBus(dead_letters=SQLiteDeadLetterStore(path))"
)
_ERROR_WIDTH = 60
_EXIT_INTERRUPTED = 130
_T = TypeVar("_T")

_Target = tuple[uuid.UUID, DeadLetter | None]
"""A letter chosen by id or filter: its id, and the letter (None: no such letter)."""


@contextlib.contextmanager
def _dlq_bus(args: argparse.Namespace) -> Iterator[EventBus]:
    """The app's bus, after warning when its dead letters cannot be shared; closed after."""
    bus = load_bus(args.app)
    if isinstance(bus.dead_letters, MemoryDeadLetterStore):
        print(_MEMORY_WARNING, file=sys.stderr)
    try:
        yield bus
    finally:
        bus.close()  # finishes deliveries in flight (not replays: _dlq_replay waits for those)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters given, as keyword arguments of the store's list/count/purge."""
    if args.since is not None and args.until is not None and args.since > args.until:
        raise _UsageError(f"--since ({_iso(args.since)}) is after --until ({_iso(args.until)})")
    given = {
        "handler": args.handler,
        "event_name": args.event,
        "since": args.since,
        "until": args.until,
    }
    return {name: value for name, value in given.items() if value is not None}


def _selection(args: argparse.Namespace, verb: str) -> dict[str, Any]:
    """The filters, once exactly one of ids, --all or filters says which letters."""
    filters = _filters(args)
    given = [bool(args.ids), args.all, bool(filters)]
    if sum(given) != 1:
        said = "nothing" if not any(given) else "more than one of them"
        raise _UsageError(
            f"say which dead letters to {verb}: one or more ids, --all, or filters "
            f"(--handler, --event, --since, --until); got {said}"
        )
    return filters


def _selected(bus: EventBus, args: argparse.Namespace, filters: dict[str, Any]) -> list[_Target]:
    """The letters chosen, in order; an id with no letter is kept, as missing (None)."""
    if not args.ids:
        return [(letter.id, letter) for letter in bus.dead_letters.list(**filters)]
    targets: list[_Target] = []
    for letter_id in dict.fromkeys(args.ids):  # each id once, in the order given
        try:
            targets.append((letter_id, bus.dead_letters.get(letter_id)))
        except DeadLetterNotFoundError:
            targets.append((letter_id, None))
    return targets


def _envelope_json(letter: DeadLetter) -> Any:
    """The envelope as JSON, read without the codec: listing needs no event class."""
    try:
        return json.loads(letter.payload)
    except ValueError:  # not JSON (another codec), or not UTF-8
        return None


def _letter_json(letter: DeadLetter, *, traceback: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(letter.id),
        "envelope_id": str(letter.envelope_id),
        "event_name": letter.event_name,
        "handler": letter.handler,
        "error_type": letter.error_type,
        "message": letter.message,
        "attempts": letter.attempts,
        "first_failed_at": _iso(letter.first_failed_at),
        "last_failed_at": _iso(letter.last_failed_at),
    }
    if traceback:
        row["traceback"] = letter.traceback
    row["envelope"] = _envelope_json(letter)
    return row


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _cut(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last one is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def _dlq_list(args: argparse.Namespace) -> int:
    filters = _filters(args)
    with _dlq_bus(args) as bus:
        letters = bus.dead_letters.list(**filters, limit=args.limit)
        total = len(letters)
        if total == args.limit:
            total = bus.dead_letters.count(**filters)
        more = f"showing {len(letters)} of {total}; use --limit to see more"
        if args.json:
            listed = [_letter_json(letter, traceback=False) for letter in letters]
            print(json.dumps(listed, indent=2))
            if total > len(letters):
                print(f"eventbus: {more}", file=sys.stderr)
            return EXIT_OK
        if not letters:
            print("no dead letters")
            return EXIT_OK
        header = ("ID", "LAST FAILED (UTC)", "HANDLER", "EVENT", "ATTEMPTS", "ERROR")
        rows = [
            (
                str(letter.id),
                letter.last_failed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                letter.handler,
                letter.event_name,
                str(letter.attempts),
                _cut(f"{letter.error_type}: {letter.message}", _ERROR_WIDTH),
            )
            for letter in letters
        ]
        for line in _table(header, rows):
            print(line)
        if total > len(letters):
            print(more)
        return EXIT_OK


def _dlq_show(args: argparse.Namespace) -> int:
    with _dlq_bus(args) as bus:
        try:
            letter = bus.dead_letters.get(args.id)
        except DeadLetterNotFoundError:
            print(
                f"eventbus: no dead letter has the id {args.id} "
                "(it may have been replayed or purged)",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
        row = _letter_json(letter, traceback=True)
        if args.json:
            print(json.dumps(row, indent=2))
            return EXIT_OK
        fields = [
            ("id", row["id"]),
            ("envelope id", row["envelope_id"]),
            ("event", row["event_name"]),
            ("handler", row["handler"]),
            ("attempts", str(row["attempts"])),
            ("first failed", row["first_failed_at"]),
            ("last failed", row["last_failed_at"]),
            ("error type", row["error_type"]),
            ("message", row["message"]),
        ]
        for name, value in fields:
            print(f"{name + ':':<14}{_indented(value, 14)}")
        envelope = row["envelope"]
        print("envelope:")
        if envelope is None:
            print(f"  (not JSON: {len(letter.payload)} bytes written by another codec)")
        else:
            print(_indented(json.dumps(envelope, indent=2, ensure_ascii=False), 2, first=True))
        print("traceback:")
        print(_indented(letter.traceback.rstrip("\n"), 2, first=True))
        return EXIT_OK


def _indented(text: str, width: int, *, first: bool = False) -> str:
    """Indent every line of ``text`` but the first (or every one, with ``first``)."""
    pad = " " * width
    lines = text.split("\n")
    head = pad + lines[0] if first else lines[0]
    return "\n".join([head, *(pad + line for line in lines[1:])])


def _dlq_replay(args: argparse.Namespace) -> int:
    filters = _selection(args, "replay")
    with _dlq_bus(args) as bus:
        targets = _selected(bus, args, filters)
        results: list[dict[str, Any]] = []
        stopped: str | None = None
        code = EXIT_PROBLEM
        for number, (letter_id, letter) in enumerate(targets, start=1):
            # In a thread of its own, so that Ctrl-C can wait for the replay in flight:
            # bus.close() does not (it waits for deliveries, not for replays).
            replaying = _Background(functools.partial(_replay_one, bus, letter_id, letter))
            try:
                try:
                    result = replaying.wait()
                except KeyboardInterrupt:
                    print(
                        "eventbus: interrupted: letting the replay in flight finish "
                        "(Ctrl-C again abandons it, leaving the letter claimed)",
                        file=sys.stderr,
                    )
                    stopped, code = "interrupted", _EXIT_INTERRUPTED
                    result = replaying.wait()
            except DeadLetterStoreError as exc:  # not a missing letter: the store failed
                stopped, code = str(exc), EXIT_PROBLEM
                break
            results.append(result)
            if len(targets) > 1:
                print(f"replayed {number}/{len(targets)}: {_progress(result)}", file=sys.stderr)
            if stopped is not None:
                break
        if args.json:
            print(json.dumps(results, indent=2))
        elif not targets:
            print("no dead letters to replay")
        else:
            print(_summary(results))
        if stopped is not None:
            print(
                f"eventbus: stopped after {len(results)} of {len(targets)}: {stopped}",
                file=sys.stderr,
            )
            return code
        ok = all(result["outcome"] == "replayed" for result in results)
        return EXIT_OK if ok else EXIT_PROBLEM


class _Background(Generic[_T]):
    """One call running in a daemon thread; ``wait`` returns its result or raises its error."""

    def __init__(self, function: Callable[[], _T]) -> None:
        self._function = function
        self._finished = threading.Event()
        self._result: _T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="eventbus-dlq", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = self._function()
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc
        finally:
            self._finished.set()

    def wait(self) -> _T:
        self._finished.wait()  # Ctrl-C interrupts the wait, not the call
        if self._error is not None:
            raise self._error
        return cast("_T", self._result)


def _replay_one(bus: EventBus, letter_id: uuid.UUID, letter: DeadLetter | None) -> dict[str, Any]:
    """Replay one letter; what happened, as JSON. Raises only when the store fails."""
    handler = None if letter is None else letter.handler
    outcome, attempts = "missing", 0
    error: str | None = "no dead letter has this id (replayed or purged?)"
    if letter is not None:
        try:
            replayed = bus.replay(letter_id)
        except DeadLetterNotFoundError:
            pass  # gone since it was listed: replayed or purged by someone else
        except ReplayInProgressError:
            outcome, error = "skipped", "being replayed elsewhere right now"
        except DeadLetterStoreError:
            raise
        except EventBusError as exc:  # its handler is gone, its event cannot be decoded, ...
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            outcome, attempts, error = replayed.outcome, replayed.attempts, replayed.error
            handler = replayed.handler
    return {
        "letter_id": str(letter_id),
        "handler": handler,
        "outcome": outcome,
        "attempts": attempts,
        "error": error,
    }


def _progress(result: dict[str, Any]) -> str:
    handler = f" ({result['handler']})" if result["handler"] else ""
    error = f": {_cut(result['error'], 200)}" if result["error"] else ""
    return f"{result['letter_id']}{handler} {result['outcome']}{error}"


def _summary(results: list[dict[str, Any]]) -> str:
    counts = dict.fromkeys(("replayed", "failed", "skipped", "missing"), 0)
    for result in results:
        counts[result["outcome"]] += 1
    parts = [f"replayed {counts['replayed']}", f"failed {counts['failed']}"]
    if counts["skipped"]:
        parts.append(f"skipped {counts['skipped']} (being replayed elsewhere)")
    if counts["missing"]:
        parts.append(f"missing {counts['missing']} (no such letter any more)")
    return ", ".join(parts)


def _dlq_purge(args: argparse.Namespace) -> int:
    filters = _selection(args, "purge")
    with _dlq_bus(args) as bus:
        targets = _selected(bus, args, filters)
        ids = [letter_id for letter_id, letter in targets if letter is not None]
        absent = len(targets) - len(ids)
        if absent:
            verb = "has" if absent == 1 else "have"
            print(f"eventbus: {absent} of the ids given {verb} no dead letter", file=sys.stderr)
        if ids and not args.yes:
            refused = _refused(len(ids))
            if refused is not None:
                return refused
        # By id, so exactly the letters counted go, never ones that failed since.
        purged = bus.dead_letters.purge(letter_ids=ids) if ids else 0
        if purged < len(ids):
            print(
                f"eventbus: {len(ids) - purged} not purged: being replayed right now "
                "(or already gone)",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps({"purged": purged}))
        else:
            print(f"purged {purged}")
        return EXIT_OK


def _refused(count: int) -> int | None:
    """Ask on the terminal before purging; the exit code if the answer is not yes."""
    noun = "dead letter" if count == 1 else "dead letters"
    if not sys.stdin.isatty():
        print(
            f"eventbus: not purging {count} {noun} without confirmation: stdin is not a "
            "terminal; pass --yes to purge",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"purge {count} {noun}? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return None
    print("eventbus: nothing purged", file=sys.stderr)
    return EXIT_PROBLEM


def _letter_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a dead letter id (a UUID): {text!r}") from None


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or datetime: {text!r} (e.g. 2024-05-01 or "
            "2024-05-01T13:45:00+02:00)"
        ) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)  # no offset: UTC, as the listing shows
    return moment.astimezone(UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


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
    _add_dlq(commands)
    return parser


def _add_dlq(commands: Any) -> None:
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument("--app", help="the bus, as module:attribute (default: $EVENTBUS_APP)")
    app.add_argument("--json", action="store_true", help="machine-readable output")
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters")
    group.add_argument("--handler", metavar="NAME", help="only this handler's letters")
    group.add_argument("--event", metavar="NAME", help="only letters of this event (wire name)")
    when = "ISO 8601 date or datetime; without an offset, UTC"
    group.add_argument(
        "--since", metavar="WHEN", type=_moment, help=f"last failed at or after ({when})"
    )
    group.add_argument(
        "--until", metavar="WHEN", type=_moment, help=f"last failed at or before ({when})"
    )
    selector = argparse.ArgumentParser(add_help=False, parents=[filters])
    selector.add_argument("ids", nargs="*", metavar="ID", type=_letter_id, help="dead letter ids")
    selector.add_argument("--all", action="store_true", help="every dead letter")

    dlq = commands.add_parser("dlq", help="list, show, replay and purge the dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    listing = actions.add_parser(
        "list", parents=[app, filters], help="the dead letters, oldest failure first"
    )
    listing.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="show at most N (default 50)"
    )
    listing.set_defaults(run=_dlq_list)
    show = actions.add_parser("show", parents=[app], help="one dead letter, traceback included")
    show.add_argument("id", metavar="ID", type=_letter_id, help="the dead letter's id")
    show.set_defaults(run=_dlq_show)
    replay = actions.add_parser(
        "replay",
        parents=[app, selector],
        help="run the letters' handlers again; a letter that succeeds is deleted",
    )
    replay.set_defaults(run=_dlq_replay)
    purge = actions.add_parser("purge", parents=[app, selector], help="delete dead letters")
    purge.add_argument("--yes", action="store_true", help="do not ask before deleting")
    purge.set_defaults(run=_dlq_purge)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except _UsageError as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("eventbus: interrupted", file=sys.stderr)
        return _EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`eventbus dlq list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PROBLEM
    except Exception as exc:  # one line, never a traceback, for failures users can act on
        from .errors import EventBusError  # noqa: PLC0415

        if not isinstance(exc, EventBusError):
            raise
        print(f"eventbus: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
