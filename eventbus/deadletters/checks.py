"""The argument checks and errors every dead-letter store shares, for stores of your own.

The built-in stores refuse the same bad inputs with the same typed errors, and the
contract suite holds every store to that: a store written outside eventbus (on
SQLAlchemy, on Django's ORM) calls these first, then does its own work::

    def claim(self, letter_id, *, owner, lease):
        letter_id, owner = check_id(letter_id), check_owner(owner)
        lease = check_lease(lease)
        ...

Each ``check_*`` returns the value as the store should use it (datetimes in UTC, a
letter's payload as ``bytes``) or raises ``ConfigurationError`` naming the problem.
"""

from __future__ import annotations

from ._memory import _checked_id as check_id
from ._memory import _checked_lease as check_lease
from ._memory import _checked_letter as check_letter
from ._memory import _checked_limit as check_limit
from ._memory import _checked_owner as check_owner
from ._memory import _checked_purge as check_purge
from ._memory import _checked_selection as check_selection
from ._memory import _checked_update as check_update
from ._memory import _closed_error as closed_error
from ._memory import _not_found as not_found
from ._memory import _not_held as not_held
from ._memory import _Selection as Selection

__all__ = [
    "Selection",
    "check_id",
    "check_lease",
    "check_letter",
    "check_limit",
    "check_owner",
    "check_purge",
    "check_selection",
    "check_update",
    "closed_error",
    "not_found",
    "not_held",
]
