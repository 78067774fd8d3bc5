"""What test runs left on the shared servers: list it, remove it.

tests/conftest.py calls ``find(run_prefix())`` when a run ends and fails the run if
anything of *this* run is left (every test removes what it made, also when it fails).
By hand, for what older runs left::

    python -m tests.leftovers                        # every test name (eb + hex) on the servers
    python -m tests.leftovers eb1a2b3c               # only names starting with eb1a2b3c
    python -m tests.leftovers --snapshot old.json    # list, and keep the list
    python -m tests.leftovers --remove old.json      # 10 minutes later: remove what is
                                                     # still there and was in old.json
    python -m tests.leftovers eb1a2b3c --remove-run  # all of run eb1a2b3c (it has ended)

Other runs use the servers at the same time, and a name of a running test looks just like
a forgotten one: removal takes only what outlived a snapshot by ten minutes, longer than
any test may run.

A server that does not answer, or whose client library is not installed, is left out and
said so (``Found.unchecked``); RabbitMQ is listed through ``rabbitmqctl`` (AMQP cannot list
queues), so it is checked only where that command works. Kafka is checked where
``EVENTBUS_TEST_KAFKA_URL`` points, or on the test broker this process started (which
keeps nothing once stopped: the end of a run looks before stopping it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tests.servers import (
    broker_reachable,
    broker_url,
    database_url,
    remove_kafka,
    remove_nats_streams,
    remove_rabbitmq,
    run_coroutine,
)

TEST_NAMES = re.compile(r"(?i)eb(test|fault)?[:_]?[0-9a-f]{6,}")
"""Names test runs made, now and before the run id: ``eb`` + hex (``eb3f9a...``,
``EB3F9A...``), and the older ``ebtest:<hex>:``, ``ebfault:<hex>:``, ``EBTEST_<hex>``."""


@attrs.define
class Found:
    """Leftovers by place (``"redis keys"``, ``"rabbitmq queues"``, ...), and the places
    that could not be looked at, with why."""

    names: dict[str, list[str]] = attrs.Factory(dict)
    unchecked: dict[str, str] = attrs.Factory(dict)

    def __bool__(self) -> bool:
        return any(self.names.values())

    def lines(self) -> list[str]:
        shown = [
            f"{place}: {', '.join(sorted(names)[:20])}{' ...' if len(names) > 20 else ''}"
            f" ({len(names)})"
            for place, names in sorted(self.names.items())
            if names
        ]
        return shown + [f"{place}: not checked ({why})" for place, why in self.unchecked.items()]


def find(prefix: str | None = None) -> Found:
    """Every name on the servers that starts with ``prefix`` (case-insensitive), or, with
    no prefix, every name a test run made (``TEST_NAMES``)."""
    pattern = re.compile(re.escape(prefix), re.IGNORECASE) if prefix else TEST_NAMES

    def matches(name: str) -> bool:
        return pattern.match(name) is not None

    found = Found()
    for place, lister in LISTERS.items():
        try:
            names = lister()
        except _UncheckedError as why:
            found.unchecked[place] = str(why)
        except Exception as error:  # a server that errs is reported, not fatal
            found.unchecked[place] = f"{type(error).__name__}: {error}"
        else:
            found.names[place] = sorted(n for n in names if matches(n))
    return found


def remove(found: Found) -> None:
    """Remove everything in ``found`` (queues before their exchanges)."""
    names = found.names
    if names.get("redis keys"):
        _delete_redis_keys(names["redis keys"])
    if names.get("rabbitmq queues") or names.get("rabbitmq exchanges"):
        remove_rabbitmq(
            broker_url("rabbitmq"),
            queues=names.get("rabbitmq queues", []),
            exchanges=names.get("rabbitmq exchanges", []),
        )
    if names.get("nats streams"):
        remove_nats_streams(broker_url("nats"), names["nats streams"])
    for name in {*names.get("kafka topics", []), *names.get("kafka groups", [])}:
        remove_kafka(broker_url("kafka"), name)
    for kind in ("postgresql", "mariadb"):
        tables, schemas = names.get(f"{kind} tables", []), names.get(f"{kind} schemas", [])
        if tables or schemas:
            _drop(kind, tables, schemas)


class _UncheckedError(Exception):
    """A place that cannot be looked at here: the reason."""


def _redis_keys() -> list[str]:
    if not broker_reachable("redis"):
        raise _UncheckedError("not reachable")
    try:
        import redis
    except ImportError:
        raise _UncheckedError("redis-py is not installed") from None
    client = redis.Redis.from_url(broker_url("redis"))
    try:
        return [key.decode() for key in client.scan_iter(match="[eE][bB]*", count=1000)]
    finally:
        client.close()


def _delete_redis_keys(keys: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(broker_url("redis"))
    try:
        client.delete(*keys)
    finally:
        client.close()


def _rabbitmqctl(what: str) -> list[str]:
    if not broker_reachable("rabbitmq"):
        raise _UncheckedError("not reachable")
    command = shutil.which("rabbitmqctl")
    if command is None:
        raise _UncheckedError("rabbitmqctl is not on PATH")
    listed = subprocess.run(
        [command, what, "--quiet", "--no-table-headers", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        raise _UncheckedError(f"rabbitmqctl {what} failed: {listed.stderr.strip()[:200]}")
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _nats_streams() -> list[str]:
    if not broker_reachable("nats"):
        raise _UncheckedError("not reachable")
    try:
        import nats
    except ImportError:
        raise _UncheckedError("nats-py is not installed") from None

    async def names() -> list[str]:
        client = await nats.connect(broker_url("nats"))
        try:
            return [info.config.name or "" for info in await client.jetstream().streams_info()]
        finally:
            await client.close()

    return run_coroutine(names())


def _kafka(which: int) -> Callable[[], list[str]]:
    """Kafka's topics (0) or consumer groups (1)."""

    def names() -> list[str]:
        from tests import kafka_broker

        if not os.environ.get("EVENTBUS_TEST_KAFKA_URL") and kafka_broker.running_url() is None:
            # The test broker keeps everything in memory and lives as long as the process
            # that started it, which checks it before stopping it (an xdist worker writes
            # down what it found for the controller): with none here, nothing can be left.
            return []
        if not broker_reachable("kafka"):
            raise _UncheckedError("not reachable")
        try:
            import aiokafka  # noqa: F401
        except ImportError:
            raise _UncheckedError("aiokafka is not installed") from None
        return run_coroutine(kafka_broker.names(broker_url("kafka")))[which]

    return names


def _database(kind: str) -> Any:
    """An engine on the ``kind`` database the tests use, or ``_UncheckedError``."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise _UncheckedError("SQLAlchemy is not installed") from None
    try:
        url, why = database_url(kind)
    except ImportError as error:
        raise _UncheckedError(f"no driver: {error}") from None
    if url is None:
        raise _UncheckedError(why or "not reachable")
    return sa.create_engine(url)


def _tables(kind: str) -> Callable[[], list[str]]:
    def tables() -> list[str]:
        import sqlalchemy as sa

        engine = _database(kind)
        try:
            return list(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()

    return tables


def _schemas(kind: str) -> Callable[[], list[str]]:
    def schemas() -> list[str]:
        import sqlalchemy as sa

        engine = _database(kind)
        try:
            return list(sa.inspect(engine).get_schema_names())
        finally:
            engine.dispose()

    return schemas


def _drop(kind: str, tables: list[str], schemas: list[str]) -> None:
    import sqlalchemy as sa

    engine = _database(kind)
    try:
        with engine.begin() as connection:
            quote = engine.dialect.identifier_preparer.quote
            for schema in schemas:
                connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE"))
            if tables:
                metadata = sa.MetaData()
                metadata.reflect(connection, only=tables)
                metadata.drop_all(connection)
    finally:
        engine.dispose()


LISTERS: dict[str, Callable[[], list[str]]] = {
    "redis keys": _redis_keys,
    "rabbitmq queues": lambda: _rabbitmqctl("list_queues"),
    "rabbitmq exchanges": lambda: _rabbitmqctl("list_exchanges"),
    "nats streams": _nats_streams,
    "kafka topics": _kafka(0),
    "kafka groups": _kafka(1),
    "postgresql tables": _tables("postgresql"),
    "postgresql schemas": _schemas("postgresql"),
    "mariadb tables": _tables("mariadb"),
}


SETTLED = 10 * 60
"""Seconds after which a name seen in a snapshot is no test's that is still running (a
test's timeout is five minutes)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", nargs="?", help="only names starting with this")
    parser.add_argument(
        "--snapshot", metavar="FILE", help="write what is found to FILE (JSON), for --remove"
    )
    parser.add_argument(
        "--remove",
        metavar="SNAPSHOT",
        help="remove what is found AND was in SNAPSHOT, written at least 10 minutes ago "
        "(other runs use the servers now: only what outlived every test is removed)",
    )
    parser.add_argument(
        "--remove-run",
        action="store_true",
        help="remove everything of the run PREFIX names (eb and its six hex digits), "
        "which has ended",
    )
    args = parser.parse_args(argv)
    if args.remove_run and not re.fullmatch(r"eb[0-9a-f]{6}", args.prefix or ""):
        parser.error("--remove-run takes the prefix of one run: eb and six hex digits")
    found = find(args.prefix)
    for line in found.lines():
        print(line)
    if not found:
        print("nothing left")
    if args.remove_run and found:
        remove(found)
        print("removed")
    if args.snapshot:
        Path(args.snapshot).write_text(json.dumps({"at": time.time(), "names": found.names}))
    if args.remove:
        snapshot = json.loads(Path(args.remove).read_text())
        if time.time() - snapshot["at"] < SETTLED:
            parser.error(f"{args.remove} is younger than {SETTLED // 60} minutes: wait")
        settled = Found(
            names={
                place: sorted(set(names) & set(snapshot["names"].get(place, [])))
                for place, names in found.names.items()
            }
        )
        remove(settled)
        for line in settled.lines():
            print(f"removed {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
