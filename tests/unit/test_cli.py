"""The `eventbus` command, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import eventbus


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "eventbus.cli", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            """
            import eventbus

            @eventbus.event("cli.order_placed", version=2)
            class OrderPlaced:
                order_id: str

            @eventbus.event("cli.order_cancelled")
            class OrderCancelled:
                order_id: str

            bus = eventbus.EventBus()

            @bus.subscribe
            def reserve(event: OrderPlaced) -> None: ...

            @bus.subscribe(name="notify")
            async def notify(event: OrderPlaced | OrderCancelled) -> None: ...

            def make_bus():
                return bus

            not_a_bus = 42

            def explode():
                raise RuntimeError("boom")
            """
        )
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    return tmp_path


def test_catalog_lists_events_and_handlers_in_dispatch_order(app: Path) -> None:
    result = run("catalog", "--app", "myapp:bus", cwd=app)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cli.order_cancelled v1")
    assert "notify  [async inline]" in lines[0]
    assert lines[1].startswith("cli.order_placed v2")
    assert "myapp.reserve  [inline]" in lines[1]
    assert "notify  [async inline]" in lines[2]


def test_catalog_json_is_machine_readable(app: Path) -> None:
    result = run("catalog", "--app", "myapp:make_bus", "--json", cwd=app)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == ["cli.order_cancelled", "cli.order_placed"]
    placed = rows[1]
    assert placed["version"] == 2
    assert placed["class"] == "myapp.OrderPlaced"
    assert placed["handlers"] == [
        {"name": "myapp.reserve", "delivery": "inline", "async": False},
        {"name": "notify", "delivery": "inline", "async": True},
    ]


def test_app_from_environment(app: Path) -> None:
    result = run("catalog", cwd=app, env={"EVENTBUS_APP": "myapp:bus"})
    assert result.returncode == 0, result.stderr
    assert "cli.order_placed" in result.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myapp", "module:attribute"),
        ("nosuchmodule:bus", "cannot import 'nosuchmodule'"),
        ("myapp:nothing", "has no attribute 'nothing'"),
        ("myapp:not_a_bus", "is a int, not an eventbus.EventBus"),
        ("broken:bus", "raised RuntimeError: broken at import"),
        ("myapp:explode", "boom"),
    ],
)
def test_bad_app_is_one_line_and_exit_2(app: Path, spec: str, message: str) -> None:
    result = run("catalog", "--app", spec, cwd=app)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_missing_app_and_bad_usage(app: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_APP"}
    result = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "catalog"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--app module:attribute" in result.stderr
    result = run("frobnicate", cwd=app)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_version(app: Path) -> None:
    result = run("--version", cwd=app)
    assert result.returncode == 0
    assert result.stdout.strip() == f"eventbus {eventbus.__version__}"


def test_console_script_is_installed(app: Path) -> None:
    script = shutil.which("eventbus", path=str(Path(sys.executable).parent))
    assert script is not None, "the eventbus console script is not installed in this venv"
    result = subprocess.run(
        [script, "catalog", "--app", "myapp:bus"],
        cwd=app,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cli.order_placed v2" in result.stdout


def test_python_dash_m_eventbus_is_the_command() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("eventbus ")


def test_worker_without_a_transport_says_how_to_set_one(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTBUS_")}
    env["SLOW_DATABASE"] = str(tmp_path / "slow.sqlite3")
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "--app", "tests.transports.slow_app:bus"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "has no transport: set EVENTBUS_TRANSPORT_URL" in result.stderr
