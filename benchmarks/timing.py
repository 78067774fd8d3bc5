"""How every benchmark here samples: interleaved rows, the minimum of each kept.

Interleaving (row A, row B, row A, row B, ...) puts every row through the same moments of
a shared, noisy machine; the minimum is the run least disturbed by the rest of it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["measure", "verdict"]


def measure(
    rows: dict[str, Callable[[], float]],
    samples: int,
    *,
    kept: dict[str, list[float]] | None = None,
    warm_up: bool = True,
    without_gc: bool = False,
) -> dict[str, float]:
    """The minimum of ``samples`` interleaved samples of each row (a sample returns its
    seconds); every sample also goes into ``kept``. ``warm_up`` runs each row once first
    (caches, specialisation, routes); ``without_gc`` keeps the collector out of the timing.
    """
    best = dict.fromkeys(rows, float("inf"))
    if warm_up:
        for sample in rows.values():
            sample()
    if without_gc:
        gc.collect()
        gc.disable()
    try:
        for _ in range(samples):
            for name, sample in rows.items():
                seconds = sample()
                best[name] = min(best[name], seconds)
                if kept is not None:
                    kept.setdefault(name, []).append(seconds)
    finally:
        if without_gc:
            gc.enable()
    return best


def verdict(missed: list[str]) -> int:
    """Print which targets this run missed; the exit code: 0 all met, 1 some missed."""
    if missed:
        print("\nmissed targets:\n  " + "\n  ".join(missed))
        return 1
    print("\nall targets met")
    return 0
