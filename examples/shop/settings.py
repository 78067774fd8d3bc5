"""The shop's settings, read from the environment.

- ``SHOP_DATA_DIR``: the folder the shop keeps its files in (``var/shop`` under the current
  directory by default; git-ignored). It holds the SQLite database, the dead letters and
  the mail templates (on PostgreSQL, the dead letters live in the database).
- ``SHOP_DATABASE_URL``: unset, the shop runs on a SQLite file in the data folder through
  the standard library. ``postgresql+psycopg://user@host/db`` runs the same modules on
  PostgreSQL through SQLAlchemy (``pip install -e ".[sqlalchemy,postgres]"``).

The bus reads its own settings, with no code here: ``EVENTBUS_TRANSPORT_URL`` (durable
handlers then run in the workers of the group, ``EVENTBUS_GROUP``, in any process), and
``EVENTBUS_WORKER=false`` for a process that only publishes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

__all__ = ["Settings"]

DEFAULT_DATA_DIR = Path("var") / "shop"


@attrs.frozen
class Settings:
    data_dir: Path
    """Absolute, so a child process started elsewhere finds the same files."""
    database_url: str | None = None
    """None: SQLite in ``data_dir`` with the standard library."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        data_dir = Path(environ.get("SHOP_DATA_DIR") or DEFAULT_DATA_DIR)
        return cls(
            data_dir=data_dir.resolve(), database_url=environ.get("SHOP_DATABASE_URL") or None
        )

    @property
    def sqlite_path(self) -> Path:
        """The shop's database when no ``SHOP_DATABASE_URL`` is given."""
        return self.data_dir / "shop.sqlite3"

    @property
    def dead_letters_path(self) -> Path:
        """The dead letters on the SQLite default (with ``SHOP_DATABASE_URL``, they live
        in that database)."""
        return self.data_dir / "dead_letters.sqlite3"

    @property
    def templates_dir(self) -> Path:
        """The mail templates the notifications module renders."""
        return self.data_dir / "templates"
