"""`eventbus dlq` on the letters the worker writes for bytes no handler can take.

A real bus (memory transport, SQLite outbox, SQLite dead letters in a file) receives three
messages its worker rightly refuses: JSON nested 5,000 deep, an envelope of an event this
app does not know, and bytes that are not JSON at all. The command line, run as the
installed script in a subprocess, must show each of them (no traceback), name the event
and envelope their bytes carry, refuse to replay them while saying what can be done, and
export their bytes exactly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from eventbus import (
    DeadLetter,
    EventBus,
    EventRegistry,
    SQLiteDeadLetterStore,
    SQLiteOutbox,
    event,
    uuid7,
)
from eventbus.transports import Message

REGISTRY = EventRegistry()
TOPIC = "shop.order_placed"
SCRIPT = shutil.which("eventbus", path=str(Path(sys.executable).parent))


@event(TOPIC, registry=REGISTRY)
class OrderPlaced:
    order_id: str


APP = textwrap.dedent(
    """
    from eventbus import EventBus, SQLiteDeadLetterStore

    bus = EventBus(dead_letters=SQLiteDeadLetterStore("dlq.db"))
    """
)

DEEP_ID = uuid7()
UNKNOWN_ID = uuid7()


def envelope_text(envelope_id: uuid.UUID, name: str, data: str) -> bytes:
    return (
        f'{{"id":"{envelope_id}","name":"{name}","version":1,'
        f'"occurred_at":"2024-05-01T00:00:00+00:00","key":null,'
        f'"correlation_id":"{envelope_id}","causation_id":null,"headers":{{}},"data":{data}}}'
    ).encode()


BODIES = {
    "deep": envelope_text(DEEP_ID, TOPIC, "[" * 5000 + "]" * 5000),
    "unknown": envelope_text(UNKNOWN_ID, "shop.order_renamed", '{"order_id":"o-1"}'),
    "garbage": b"\xff\xfe not an envelope at all",
}


async def _seed(directory: Path) -> None:
    outbox = SQLiteOutbox(directory / "app.db", poll_interval=0.05)
    dead_letters = SQLiteDeadLetterStore(directory / "dlq.db")
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        dead_letters=dead_letters,
        transport_url="memory://",
        group="g",
    )

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None: ...

    try:
        await bus.astart()
        transport = bus.transport
        assert transport is not None
        await transport.connect()
        for body in BODIES.values():
            await transport.publish(TOPIC, Message(uuid.uuid4(), TOPIC, None, body))
        async with asyncio.timeout(30):
            while bus.dead_letters.count() < len(BODIES):
                await asyncio.sleep(0.02)
    finally:
        await bus.aclose()
        outbox.close()
        dead_letters.close()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    asyncio.run(_seed(tmp_path))
    return tmp_path


def letters_by_kind(shop: Path) -> dict[str, DeadLetter]:
    store = SQLiteDeadLetterStore(shop / "dlq.db")
    try:
        letters = store.list()
    finally:
        store.close()
    assert len(letters) == len(BODIES)
    assert {letter.handler for letter in letters} == {"@worker"}
    by_body = {letter.payload: letter for letter in letters}
    return {kind: by_body[body] for kind, body in BODIES.items()}


def run(shop: Path, *args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
    assert SCRIPT is not None, "the eventbus console script is not installed in this venv"
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_APP"}
    return subprocess.run(
        [SCRIPT, "dlq", *args, "--app", "app:bus"],
        cwd=shop,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )


def test_every_command_shows_every_letter_the_worker_wrote(shop: Path) -> None:
    letters = letters_by_kind(shop)
    listed = run(shop, "list")
    assert listed.returncode == 0, listed.stderr
    as_json = run(shop, "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["id"]: row for row in json.loads(as_json.stdout)}
    assert set(rows) == {str(letter.id) for letter in letters.values()}
    deep = rows[str(letters["deep"].id)]
    assert deep["envelope"] is None  # too deep to show, and said so, with the way out
    assert "nested more than 64 levels deep" in deep["envelope_not_shown"]
    assert f"eventbus dlq export {letters['deep'].id} --raw" in deep["envelope_not_shown"]
    unknown = rows[str(letters["unknown"].id)]
    assert unknown["envelope"]["data"] == {"order_id": "o-1"}  # shown: JSON, not deep
    assert "not UTF-8" in rows[str(letters["garbage"].id)]["envelope_not_shown"]
    for letter in letters.values():
        for args in (["show", str(letter.id)], ["show", str(letter.id), "--json"]):
            shown = run(shop, *args)
            assert shown.returncode == 0, shown.stderr
            assert b"Traceback" not in shown.stdout + shown.stderr
        text = run(shop, "show", str(letter.id)).stdout.decode()
        assert f"event:        {letter.event_name}" in text
    deep_text = run(shop, "show", str(letters["deep"].id)).stdout.decode()
    assert "(not shown: nested more than 64 levels deep" in deep_text


def test_a_worker_letter_names_the_event_and_envelope_its_bytes_carry(shop: Path) -> None:
    letters = letters_by_kind(shop)
    assert (letters["deep"].event_name, letters["deep"].envelope_id) == (TOPIC, DEEP_ID)
    unknown = letters["unknown"]
    assert (unknown.event_name, unknown.envelope_id) == ("shop.order_renamed", UNKNOWN_ID)
    assert "shop.order_renamed" in unknown.message  # the codec's reason
    garbage = letters["garbage"]
    assert garbage.event_name == TOPIC  # nothing readable: the topic it came on
    assert garbage.envelope_id.version == 7  # a new id, never the all-zero one
    assert f"{garbage.envelope_id} was made up for this letter" in garbage.message
    for letter in letters.values():
        assert letter.id.version == 7


def test_replaying_a_worker_letter_says_it_cannot_and_what_can_be_done(shop: Path) -> None:
    letters = letters_by_kind(shop)
    letter = letters["unknown"]
    replayed = run(shop, "replay", str(letter.id))
    assert replayed.returncode == 1
    summary, reason = replayed.stdout.decode().splitlines()
    assert summary == "replayed 0, failed 0, not replayable 1"
    assert reason.startswith(f"  {letter.id} (@worker) not replayable: dead letter")
    assert "could not hand to any handler" in reason
    for way_out in ("dlq show", "dlq export", "--raw", "dlq purge"):
        assert way_out in reason
    as_json = json.loads(run(shop, "replay", "--all", "--json").stdout)
    assert {row["outcome"] for row in as_json} == {"not replayable"}
    assert len(letters_by_kind(shop)) == 3  # every letter kept
    from eventbus import DeadLetterNotReplayableError

    bus = EventBus(dead_letters=SQLiteDeadLetterStore(shop / "dlq.db"))
    try:
        with pytest.raises(DeadLetterNotReplayableError, match="cannot be replayed"):
            bus.replay(letter.id)
        assert bus.dead_letters.get(letter.id).attempts == letter.attempts  # unchanged
    finally:
        bus.close()
        bus.dead_letters.close()


def test_export_writes_a_letter_whole_or_its_raw_bytes(shop: Path) -> None:
    for letter in letters_by_kind(shop).values():
        raw = run(shop, "export", str(letter.id), "--raw")
        assert raw.returncode == 0, raw.stderr
        assert raw.stdout == letter.payload
        whole = run(shop, "export", str(letter.id))
        assert whole.returncode == 0, whole.stderr
        exported = json.loads(whole.stdout)
        assert base64.b64decode(exported["payload_base64"]) == letter.payload
        assert exported["id"] == str(letter.id)
        assert exported["message"] == letter.message
    missing = run(shop, "export", str(uuid.uuid4()), "--raw")
    assert missing.returncode == 1
    assert b"no dead letter has the id" in missing.stderr


def test_export_raw_refuses_to_write_bytes_to_a_terminal(shop: Path) -> None:
    letter = letters_by_kind(shop)["garbage"]
    leader, follower = pty.openpty()
    try:
        refused = run(shop, "export", str(letter.id), "--raw", stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert refused.returncode == 2
    assert b"redirect them to a file" in refused.stderr
