"""A clean slate: the scenario tells the same story every time it runs.

Runs before ``app`` is imported (importing it opens the database and creates the tables).
"""

from __future__ import annotations

from pathlib import Path

from .notifications.templates import SHIPPED
from .schema import TABLES
from .settings import Settings

__all__ = ["reset"]


def reset(settings: Settings) -> None:
    """Delete what an earlier run left: the shop's files in the data folder, and on a
    database server the shop's tables and its outbox's.

    Only the files the shop makes, by name: ``SHOP_DATA_DIR`` may point at a folder that
    holds other things too.
    """
    if settings.database_url is not None:
        _drop_tables(settings.database_url)
    for database in (settings.sqlite_path, settings.dead_letters_path):
        for suffix in ("", "-wal", "-shm", "-journal"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)
    (settings.data_dir / "shop.log").unlink(missing_ok=True)
    for template in SHIPPED.glob("*.txt"):
        (settings.templates_dir / template.name).unlink(missing_ok=True)
    _remove_if_empty(settings.templates_dir)


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _drop_tables(url: str) -> None:
    # Imported here: only a database URL needs SQLAlchemy.
    import sqlalchemy as sa  # noqa: PLC0415
    from eventbus_contrib.sqlalchemy import outbox_tables  # noqa: PLC0415

    outbox, inbox = outbox_tables(sa.MetaData())
    names = [*TABLES, outbox.name, inbox.name]
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for name in names:
                connection.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    finally:
        engine.dispose()
