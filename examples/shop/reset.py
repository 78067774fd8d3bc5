"""A clean slate: the scenario tells the same story every time it runs.

Workers in other processes may be running already, with the database, the dead letters
file and the templates folder open: so the reset empties tables and stores rather than
dropping or deleting them, and the workers carry on with the fresh state.
"""

from __future__ import annotations

from pathlib import Path

from .notifications.templates import SHIPPED
from .schema import TABLES
from .settings import Settings
from .wiring import Shop

__all__ = ["remove_files", "reset"]

OUTBOX_TABLES = ("eventbus_outbox", "eventbus_inbox")
"""The outbox's tables, by the name both stores give them by default (the dead letters
are emptied through their store, wherever it keeps them)."""


def remove_files(settings: Settings) -> None:
    """Delete the files of an earlier run no other process keeps open: the log and the
    deployed templates. Only those the shop makes, by name: ``SHOP_DATA_DIR`` may point at
    a folder that holds other things too."""
    (settings.data_dir / "shop.log").unlink(missing_ok=True)
    for template in SHIPPED.glob("*.txt"):
        (settings.templates_dir / template.name).unlink(missing_ok=True)
    _remove_if_empty(settings.templates_dir)


def reset(shop: Shop) -> None:
    """Empty what an earlier run left in the database (the shop's tables, the event flow,
    the outbox and its inbox) and the dead letters."""
    with shop.db.transaction() as tx:
        for name in (*TABLES, *OUTBOX_TABLES):
            tx.execute(f"DELETE FROM {name}")  # noqa: S608 - names from the constants above
    shop.bus.dead_letters.purge(all=True)


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
