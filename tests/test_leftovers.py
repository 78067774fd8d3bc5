"""The end of a run fails it when the servers hold something named with the run's id.

Each test starts a pytest run of its own (with tests/conftest.py as a plugin) on a test
file that leaves a Redis key behind, and reads what that run says and returns: a key of
its own fails the run and is named in the summary; a key of another run (another
checkout testing against the same server) does not. With pytest-xdist installed, the same
holds for a run spread over workers: they share the controller's run id, and the check
runs once, on the controller, after them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.servers import RUN_VARIABLE, remove_redis_keys, require_broker

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """
import redis

from tests.servers import fresh_name, require_broker


def test_leaves_a_key_behind():
    client = redis.Redis.from_url(require_broker("redis"))
    client.set(f"{fresh_name()}:left", b"x")
    client.close()


def test_leaves_nothing():
    assert fresh_name() != fresh_name()
"""


def run_pytest(test_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if k != RUN_VARIABLE},
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(test_file.parent),
            *options,
            str(test_file),
        ],
        cwd=test_file.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _run_prefix(output: str) -> str:
    found = re.search(r"left on the servers by this run \((eb[0-9a-f]{6})\)", output)
    assert found, output
    return found[1]


@pytest.fixture
def redis_url() -> str:
    return require_broker("redis")


@pytest.mark.parametrize("workers", [0, 2], ids=["one process", "xdist"])
def test_a_run_that_leaves_its_own_name_behind_fails_and_says_what(
    workers: int, redis_url: str, tmp_path: Path
) -> None:
    if workers:
        pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(LEAKY, encoding="utf-8")
    ran = run_pytest(test_file, *(["-n", str(workers)] if workers else []))
    output = ran.stdout + ran.stderr
    prefix = _run_prefix(output)
    try:
        assert ran.returncode == pytest.ExitCode.TESTS_FAILED, output
        assert "2 passed" in output  # the tests passed: the run failed for what it left
        assert re.search(rf"redis keys: {prefix}[0-9a-f]{{8}}:left \(1\)", output), output
    finally:
        remove_redis_keys(redis_url, prefix)


def test_names_of_other_runs_do_not_fail_this_one(redis_url: str, tmp_path: Path) -> None:
    import redis

    other = f"eb{uuid.uuid4().hex[:6]}{uuid.uuid4().hex[:8]}:someone-elses"
    client = redis.Redis.from_url(redis_url)
    client.set(other, b"x")
    try:
        test_file = tmp_path / "test_tidy.py"
        test_file.write_text("def test_nothing():\n    pass\n", encoding="utf-8")
        ran = run_pytest(test_file)
        output = ran.stdout + ran.stderr
        assert ran.returncode == pytest.ExitCode.OK, output
        assert "left on the servers" not in output
    finally:
        client.delete(other)
        client.close()
