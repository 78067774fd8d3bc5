"""The minimal FastAPI example (examples/fastapi_orders.py), run as its users run it: in a
process of its own, through FastAPI's TestClient, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.shop_story import ROOT
from tests.strict_warnings import FLAGS

CLIENT = """
import json

from fastapi.testclient import TestClient

from examples.fastapi_orders import app, bus

results = {}
with TestClient(app) as client:
    results["placed"] = client.post("/orders/o-1", params={"total_cents": 990}).status_code
    results["twice"] = client.post("/orders/o-1", params={"total_cents": 990}).status_code
    results["refused"] = client.post("/orders/o-2", params={"total_cents": 0}).status_code
    bus.drain(timeout=30)
    results["o-1"] = client.get("/orders/o-1").json()
    results["o-2"] = client.get("/orders/o-2").status_code
with TestClient(app) as client:  # the lifespan runs again, on the new client's loop
    results["again"] = client.post("/orders/o-3", params={"total_cents": 5}).status_code
    bus.drain(timeout=30)
    results["o-3"] = client.get("/orders/o-3").json()
results["outbox"] = bus.outbox.status().pending
results["dead_letters"] = bus.dead_letters.count()
bus.close()
print(json.dumps(results))
"""


def run_example(database_url: str, cwd: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "ORDERS_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, *FLAGS, "-c", CLIENT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


EXPECTED = {
    "placed": 201,
    "twice": 409,
    "refused": 422,  # refused after its publish: neither the order nor the event stays
    "o-1": {
        "order_id": "o-1",
        "total_cents": 990,
        "receipt": "order o-1: 9.90 EUR",
        "announced": True,
    },
    "o-2": 404,
    "again": 201,
    "o-3": {
        "order_id": "o-3",
        "total_cents": 5,
        "receipt": "order o-3: 0.05 EUR",
        "announced": True,
    },
    "outbox": 0,
    "dead_letters": 0,
}


def test_the_example_runs_on_a_sqlite_file(tmp_path: Path) -> None:
    assert run_example(f"sqlite:///{tmp_path / 'orders.sqlite3'}", tmp_path) == EXPECTED


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_example_runs_on_postgresql(postgresql_schema: str, tmp_path: Path) -> None:
    assert run_example(postgresql_schema, tmp_path) == EXPECTED


def test_the_example_is_short() -> None:
    lines = (ROOT / "examples" / "fastapi_orders.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150
