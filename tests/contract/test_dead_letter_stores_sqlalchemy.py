"""``SQLAlchemyDeadLetterStore`` on SQLite, PostgreSQL and MariaDB: the contract, and a fleet.

The dead-letter contract (tests/contract/test_dead_letter_stores.py) is run here as it
is, every test that takes a store, against this store on each database (``backend``,
tests/conftest.py: servers that do not answer skip, or fail under CI=true), with the
contract's own fake clock for the leases. Then what only a store shared by a fleet must
do: claims raced by processes on their own engines have one winner each, leases are
measured by the database's clock, a table made by the published DDL is used as it is,
and ``eventbus dlq`` (finding the store through the application's bus, ``--app``) lists
and replays letters written by another process.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from eventbus.errors import ConfigurationError, DeadLetterStoreError
from eventbus.typing import DeadLetterStore
from tests.contract import test_dead_letter_stores as contract
from tests.contract.test_dead_letter_stores import (  # noqa: F401 - mixed: a fixture it uses
    LEASE,
    REPO,
    T0,
    FakeClock,
    make_letter,
    mixed,
)

# Every contract test that takes a store runs here against this one.
for _name, _test in vars(contract).items():
    if _name.startswith("test_") and {"store", "every_store"} & set(
        inspect.signature(_test).parameters
    ):
        globals()[_name] = _test
del _name, _test


clock = contract.clock  # the contract's fake clock, as a fixture of this module too


@pytest.fixture
def sqlalchemy_store(
    make_engine: Callable[..., Any], prefix: str, clock: FakeClock
) -> Iterator[DeadLetterStore]:
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    opened = SQLAlchemyDeadLetterStore(make_engine(), prefix=prefix, clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def store(sqlalchemy_store: DeadLetterStore) -> DeadLetterStore:
    return sqlalchemy_store


@pytest.fixture
def every_store(sqlalchemy_store: DeadLetterStore) -> DeadLetterStore:
    return sqlalchemy_store


def test_contract_tests_were_taken() -> None:
    taken = [name for name in globals() if name.startswith("test_") and name in vars(contract)]
    assert len(taken) >= 30  # the import above found the contract (36 tests today)


# -- what a fleet needs --------------------------------------------------------------------


_CLAIMER = """
import json, sys, time, uuid
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

url, prefix, owner = sys.argv[1], sys.argv[2], sys.argv[3]
letter_ids = [uuid.UUID(text) for text in json.loads(sys.argv[4])]
engine = sa.create_engine(url)
store = SQLAlchemyDeadLetterStore(engine, prefix=prefix)
print("ready", flush=True)
sys.stdin.readline()
won = []
started = time.time()
for letter_id in letter_ids:
    if store.claim(letter_id, owner=owner, lease=600) is not None:
        won.append(str(letter_id))
ended = time.time()
store.close()
engine.dispose()
print(json.dumps({"won": won, "started": started, "ended": ended}), flush=True)
"""


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def test_processes_racing_for_claims_split_the_letters(
    backend: Any, engine: Any, prefix: str
) -> None:
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    store = SQLAlchemyDeadLetterStore(engine, prefix=prefix)
    letters = [make_letter(failed_at=T0 + timedelta(seconds=i)) for i in range(200)]
    for letter in letters:
        store.add(letter)
    argument = json.dumps([str(letter.id) for letter in letters])
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, backend.url, prefix, owner, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=REPO,
        )
        for owner in ("host-a", "host-b", "host-c")
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.stderr
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert [worker.returncode for worker in workers] == [0, 0, 0], [err for _, err in results]
    reports = [json.loads(out) for out, _ in results]
    won = [set(report["won"]) for report in reports]
    # Each letter went to exactly one process, and every letter to one.
    assert sum(len(each) for each in won) == len(letters)
    assert set().union(*won) == {str(letter.id) for letter in letters}
    # A replay's claim is what protects the handler: no process may take a letter
    # another holds (checked row by row, as each process saw it).
    for letter in letters:
        assert store.claim(letter.id, owner="host-d", lease=LEASE) is None
    store.close()


def test_leases_are_measured_by_the_database_clock(engine: Any, prefix: str) -> None:
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    store = SQLAlchemyDeadLetterStore(engine, prefix=prefix)  # no clock: the database's
    letter = make_letter()
    store.add(letter)
    assert store.claim(letter.id, owner="host-a", lease=0.2) == letter
    assert store.claim(letter.id, owner="host-b", lease=60) is None  # held, not expired
    assert store.purge(all=True) == 0  # a live claim is never purged
    time.sleep(0.5)  # the database's clock moves past the lease
    assert store.claim(letter.id, owner="host-b", lease=60) == letter  # taken over
    assert not store.resolve(letter.id, owner="host-a")  # the first lost it
    assert store.resolve(letter.id, owner="host-b")
    assert store.count() == 0
    store.close()


def test_a_table_made_by_the_published_ddl_is_used(make_engine: Callable[..., Any], prefix: str):
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    first = SQLAlchemyDeadLetterStore(make_engine(), prefix=f"{prefix}_a")
    ddl = first.schema_sql().replace(f"{prefix}_a", f"{prefix}_b")
    first.close()
    engine = make_engine()
    with pytest.raises(DeadLetterStoreError, match=r"does not exist.*create=True"):
        SQLAlchemyDeadLetterStore(engine, prefix=f"{prefix}_b", create=False)
    with engine.begin() as connection:
        for statement in ddl.split(";\n"):
            if statement.strip():
                connection.exec_driver_sql(statement)
    store = SQLAlchemyDeadLetterStore(engine, prefix=f"{prefix}_b", create=False)
    letter = make_letter()
    store.add(letter)
    assert store.list() == [letter]
    store.close()


def test_bad_arguments_are_refused_with_the_fix(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    with pytest.raises(ConfigurationError, match="create_engine"):
        SQLAlchemyDeadLetterStore("sqlite:///x.db")  # type: ignore[arg-type]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError, match="prefix"):
        SQLAlchemyDeadLetterStore(engine, prefix="no spaces")
    memory = sa.create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="in-memory"):
        SQLAlchemyDeadLetterStore(memory)
    engine.dispose()


def test_errors_name_the_operation_without_the_password(backend: Any, prefix: str) -> None:
    import sqlalchemy as sa
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    if backend.name == "sqlite":
        pytest.skip("SQLite has no password to leak")
    url = sa.make_url(backend.url).set(password="canary-s3cret", port=1)  # nothing listens
    with pytest.raises(DeadLetterStoreError) as caught:
        SQLAlchemyDeadLetterStore(sa.create_engine(url), prefix=prefix)
    text = str(caught.value)
    assert "canary-s3cret" not in text
    assert "open the dead-letter table" in text


_APP = textwrap.dedent(
    """
    import os

    import sqlalchemy as sa

    from eventbus import EventBus, EventRegistry, RetryPolicy, event
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    REGISTRY = EventRegistry()


    @event("shop.order_placed", registry=REGISTRY)
    class OrderPlaced:
        order_id: str


    engine = sa.create_engine(os.environ["DLQ_URL"])
    bus = EventBus(
        registry=REGISTRY,
        dead_letters=SQLAlchemyDeadLetterStore(engine, prefix=os.environ["DLQ_PREFIX"]),
        retry=RetryPolicy.never(),
    )


    @bus.subscribe(name="mail.confirm", delivery="after_commit")
    def confirm(event: OrderPlaced) -> None:
        if os.environ.get("MAIL_DOWN"):
            raise ConnectionError(f"mail server down for {event.order_id}")
        with open(os.environ["EFFECTS"], "a") as effects:
            effects.write(event.order_id + "\\n")


    if __name__ == "__main__":
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.publish(OrderPlaced(order_id="o-2"))
        bus.close()
    """
)


def test_the_dlq_command_sees_and_replays_what_another_process_wrote(
    backend: Any, engine: Any, prefix: str, tmp_path: Path
) -> None:
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    (tmp_path / "fleetapp.py").write_text(_APP)
    effects = tmp_path / "effects.log"
    env = {
        **_env(),
        "DLQ_URL": backend.url,
        "DLQ_PREFIX": prefix,
        "EFFECTS": str(effects),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # One process (a web host) fails twice and keeps both letters in the database.
    wrote = run(sys.executable, "fleetapp.py", MAIL_DOWN="1")
    assert wrote.returncode == 0, wrote.stderr
    listed = run(sys.executable, "-m", "eventbus", "dlq", "list", "--app", "fleetapp:bus", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert sorted(letter["envelope"]["data"]["order_id"] for letter in letters) == ["o-1", "o-2"]
    assert {letter["handler"] for letter in letters} == {"mail.confirm"}
    assert "memory" not in listed.stderr  # no warning: the letters are shared

    # Another process (an operator's shell) replays them once the mail server is back.
    replayed = run(
        sys.executable, "-m", "eventbus", "dlq", "replay", "--all", "--app", "fleetapp:bus"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("replayed 2, failed 0")
    assert sorted(effects.read_text().split()) == ["o-1", "o-2"]
    store = SQLAlchemyDeadLetterStore(engine, prefix=prefix)
    assert store.count() == 0
    store.close()


def test_a_letter_keeps_its_id_across_stores_on_one_table(
    make_engine: Callable[..., Any], prefix: str
) -> None:
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore

    one = SQLAlchemyDeadLetterStore(make_engine(), prefix=prefix)
    two = SQLAlchemyDeadLetterStore(make_engine(), prefix=prefix)
    letter = make_letter(letter_id=uuid.uuid4())
    one.add(letter)
    assert two.get(letter.id) == letter
    with pytest.raises(DeadLetterStoreError, match="already stored"):
        two.add(letter)
    one.close()
    two.close()
