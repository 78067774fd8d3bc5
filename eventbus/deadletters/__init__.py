"""Dead letters: envelopes a handler gave up on, kept with the error until replayed."""

from __future__ import annotations

from .._records import DeadLetter
from ._memory import MemoryDeadLetterStore
from ._sqlite import SQLiteDeadLetterStore

__all__ = ["DeadLetter", "MemoryDeadLetterStore", "SQLiteDeadLetterStore"]
