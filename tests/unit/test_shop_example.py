"""The README's first command: the shop example runs and tells its story."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_shop_scenario_runs_and_prints_its_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.shop"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "o-1  confirmed" in out
    assert "o-2  cancelled" in out
    assert "o-3  cancelled" in out
    assert "o-4  rejected" in out
    assert "to mallory: order o-2 was cancelled (payment declined)" in out
    assert "stock: book=8, mug=2, poster=0" in out
    flow = out.split("event flow")[1].splitlines()[1:]
    names = [line.split()[-1] for line in flow]
    assert names[:4] == [
        "shop.order_placed",
        "shop.stock_reserved",
        "shop.payment_taken",
        "shop.order_confirmed",
    ]
    # Every event of order o-1's story shares the first event's correlation id.
    first = flow[0].split()
    assert all(line.split()[2] == first[2] for line in flow[:4])
