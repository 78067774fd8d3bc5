"""examples/django_shop, run as its README recipe runs it: the demo, then the eventbus
commands through Django's command line, on a SQLite file of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, database: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SHOP_DATABASE": str(database),
        "DJANGO_SETTINGS_MODULE": "examples.django_shop.settings",
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_django_example_delivers_after_commit_and_drops_what_rolled_back(
    tmp_path: Path,
) -> None:
    database = tmp_path / "shop.sqlite3"
    demo = run("-m", "examples.django_shop", database=database)
    assert demo.returncode == 0, demo.stderr
    # A-2's request failed: its order, its event and so its reservation rolled back.
    assert demo.stdout.strip() == "reserved: ['A-1']"
    assert "receipt sent for A-1" in demo.stderr
    assert "A-2" not in demo.stderr

    status = run("-m", "django", "eventbus", "outbox", "status", "--json", database=database)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == 0
    letters = run("-m", "django", "eventbus", "dlq", "list", "--json", database=database)
    assert letters.returncode == 0, letters.stderr
    assert json.loads(letters.stdout) == []
    catalog = run("-m", "django", "eventbus", "catalog", database=database)
    assert "examples.django_shop.handlers.reserve_stock  [durable]" in catalog.stdout
