"""The benchmarks keep running (their ratios are judged by people, never by tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dispatch_benchmark_runs_and_prints_every_row() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/dispatch.py", "--quick", "--samples", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 0: every target met; 1: a target missed on this (noisy) run. Anything else is a crash.
    assert result.returncode in (0, 1), result.stderr
    for row in ("eventbus publish", "eventbus apublish", "blinker send", "pyee emit"):
        assert result.stdout.count(row) >= 4, row
