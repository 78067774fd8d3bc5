"""``eventbus dlq``: list, show, export, replay and purge the dead letters.

Every command shows every letter the bus itself wrote, whatever its bytes: a payload is
read leniently and bounded (``deadletters._peek``), never decoded into event classes, and
one that cannot be shown (not JSON, nested too deep) is said so, with ``export --raw``
to get its bytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from ._bus import EventBus
from ._cli_app import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    Parser,
    UsageError,
    app_options,
    load_bus,
)
from ._redact import describe_error
from .deadletters import DeadLetter, MemoryDeadLetterStore
from .deadletters._peek import Peeked, peek
from .errors import (
    DeadLetterNotFoundError,
    DeadLetterNotReplayableError,
    DeadLetterStoreError,
    EventBusError,
    ReplayInProgressError,
)

__all__ = ["add_dlq"]


_MEMORY_WARNING = (
    "eventbus: warning: this bus keeps dead letters in memory: a separate process sees none; "
    "configure EventBus(dead_letters=SQLiteDeadLetterStore(path))"
)
_ERROR_WIDTH = 60
_REASON_WIDTH = 500
"""Characters of a failed replay's reason printed on its line (``dlq show`` has it all)."""
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
        raise UsageError(f"--since ({_iso(args.since)}) is after --until ({_iso(args.until)})")
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
        raise UsageError(
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
    # The envelope as JSON, read without the codec (listing needs no event class), or
    # null and why not (not JSON, nested too deep to show).
    peeked = peek(letter.payload)
    row["envelope"] = peeked.document
    if peeked.why_not is not None:
        row["envelope_not_shown"] = _not_shown(letter, peeked)
    return row


def _not_shown(letter: DeadLetter, peeked: Peeked) -> str:
    return (
        f"{peeked.why_not}; `eventbus dlq export {letter.id} --raw > message.bin` writes "
        f"its {len(letter.payload)} bytes"
    )


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
        print("envelope:")
        if "envelope_not_shown" in row:
            print(f"  (not shown: {row['envelope_not_shown']})")
        else:
            text = json.dumps(row["envelope"], indent=2, ensure_ascii=False)
            print(_indented(text, 2, first=True))
        print("traceback:")
        print(_indented(letter.traceback.rstrip("\n"), 2, first=True))
        return EXIT_OK


def _dlq_export(args: argparse.Namespace) -> int:
    """The letter whole, as JSON with its bytes in base64; or (``--raw``) its bytes."""
    if args.raw and sys.stdout.isatty():
        raise UsageError(
            "--raw writes the letter's bytes as they are: redirect them to a file "
            f"(eventbus dlq export {args.id} --raw > message.bin)"
        )
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
        if args.raw:
            sys.stdout.flush()
            sys.stdout.buffer.write(letter.payload)
            sys.stdout.buffer.flush()
            return EXIT_OK
        row = _letter_json(letter, traceback=True)
        row["payload_base64"] = base64.b64encode(letter.payload).decode("ascii")
        print(json.dumps(row, indent=2))
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
                    stopped, code = "interrupted", EXIT_INTERRUPTED
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
        except DeadLetterNotReplayableError as exc:  # raw bytes: no handler can take them
            outcome, error = "not replayable", str(exc)
        except DeadLetterStoreError:
            raise
        except EventBusError as exc:  # its handler is gone, its event cannot be decoded, ...
            outcome, error = "failed", describe_error(exc)
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
    """One line of counts, then one line per letter that was not resolved, with why."""
    counts = dict.fromkeys(
        ("replayed", "already_handled", "failed", "not replayable", "skipped", "missing"), 0
    )
    for result in results:
        counts[result["outcome"]] += 1
    parts = [f"replayed {counts['replayed']}", f"failed {counts['failed']}"]
    if counts["already_handled"]:
        parts.append(
            f"already handled {counts['already_handled']} (the handler's inbox says its "
            "effects were committed before: nothing ran, the letter is gone)"
        )
    if counts["not replayable"]:
        parts.append(f"not replayable {counts['not replayable']}")
    if counts["skipped"]:
        parts.append(f"skipped {counts['skipped']} (being replayed elsewhere)")
    if counts["missing"]:
        parts.append(f"missing {counts['missing']} (no such letter any more)")
    lines = [", ".join(parts)]
    for result in results:
        if result["outcome"] in ("failed", "not replayable"):
            handler = f" ({result['handler']})" if result["handler"] else ""
            reason = result["error"] or ""
            # A failure's reason is cut (dlq show has it whole); not-replayable says what
            # can be done, and is bounded already.
            width = _REASON_WIDTH if result["outcome"] == "failed" else len(reason)
            reason = _cut(reason, max(width, 1))
            lines.append(f"  {result['letter_id']}{handler} {result['outcome']}: {reason}")
    return "\n".join(lines)


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


def add_dlq(commands: Any) -> None:
    app = app_options()
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

    dlq = commands.add_parser("dlq", help="list, show, export, replay and purge the dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=Parser)
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
    export = actions.add_parser(
        "export",
        parents=[app],
        help="one dead letter whole, as JSON with its bytes in base64 (or --raw: the bytes)",
    )
    export.add_argument("id", metavar="ID", type=_letter_id, help="the dead letter's id")
    export.add_argument(
        "--raw", action="store_true", help="write the letter's bytes as they are (to a file)"
    )
    export.set_defaults(run=_dlq_export)
    replay = actions.add_parser(
        "replay",
        parents=[app, selector],
        help="run the letters' handlers again; a letter that succeeds is deleted",
    )
    replay.set_defaults(run=_dlq_replay)
    purge = actions.add_parser("purge", parents=[app, selector], help="delete dead letters")
    purge.add_argument("--yes", action="store_true", help="do not ask before deleting")
    purge.set_defaults(run=_dlq_purge)
