"""A worker on Redis closes every connection it opens: no ResourceWarning.

The case of tests/unit/test_resource_warnings.py (whose application and helpers it uses)
that needs a broker and the redis extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import broker_namespace
from tests.unit.test_resource_warnings import (
    assert_no_resource_warning,
    outbox_rows,
    run,
    write_app,
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A namespace of its own on the loopback Redis; its keys are deleted at the end."""
    with broker_namespace("redis") as space:
        yield space.url


def test_a_worker_on_redis_leaves_nothing_open(tmp_path: Path, redis_url: str) -> None:
    """A real broker: the relay publishes over one connection pool, the worker reads
    over another; the bus's close closes both."""
    app = write_app(tmp_path)
    result = run(app, "write.py", "drain", EVENTBUS_TRANSPORT_URL=redis_url)
    assert result.returncode == 0, result.stderr
    assert_no_resource_warning(result.stderr)
    assert outbox_rows(app) == 0
    assert "refused" in result.stderr
