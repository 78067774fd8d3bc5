"""Fixtures of the shop's tests: a PostgreSQL schema of their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import fresh_name


@pytest.fixture
def postgresql_schema(backend: Any) -> Iterator[str]:
    """A PostgreSQL URL whose connections work in a fresh schema (named like every server
    name of this run, see tests/servers.py), dropped at the end.

    Ask for it with ``@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)``:
    ``backend`` (tests/conftest.py) finds the server, or skips (fails under CI=true).
    """
    import sqlalchemy as sa

    url = sa.make_url(backend.url)
    schema = fresh_name()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
