"""A clean slate: the scenario tells the same story every time it runs.

Runs before ``app`` is imported (importing it opens the database and creates the tables).
"""

from __future__ import annotations

import shutil

from .schema import TABLES
from .settings import Settings

__all__ = ["reset"]


def reset(settings: Settings) -> None:
    """Delete what an earlier run left: the data folder's files, and on a database
    server the shop's tables and its outbox's."""
    if settings.database_url is not None:
        _drop_tables(settings.database_url)
    # The SQLite database, the dead letters and the templates all live in the data folder.
    shutil.rmtree(settings.data_dir, ignore_errors=True)


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
