"""The ledger that judges a broker fault test: what was confirmed, what arrived, how often.

Confirmed means publish returned (the broker took it); every confirmed message must be
received at least once (``lost`` empty); a message received more than once is a duplicate,
allowed under at-least-once and counted so the report shows it.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

import attrs

__all__ = ["Ledger"]

K = TypeVar("K")


@attrs.define
class Ledger(Generic[K]):
    confirmed: set[K] = attrs.Factory(set)
    received: Counter[K] = attrs.Factory(Counter)
    failed_publishes: int = 0
    """Publishes that raised (and were retried by the test)."""

    @property
    def lost(self) -> set[K]:
        return self.confirmed - set(self.received)

    @property
    def duplicates(self) -> int:
        return sum(self.received.values()) - len(self.received)

    def report(self, title: str, **more: object) -> str:
        """One line: the counts, then ``more`` (name=value, underscores read as spaces)."""
        extra = "".join(f", {name.replace('_', ' ')} {value}" for name, value in more.items())
        return (
            f"{title}: confirmed {len(self.confirmed)}, received {len(self.received)} "
            f"distinct ({sum(self.received.values())} in all), duplicates {self.duplicates}, "
            f"lost {len(self.lost)}, publishes that raised {self.failed_publishes}{extra}"
        )
