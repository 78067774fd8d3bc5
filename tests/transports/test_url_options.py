"""Transport URLs of the brokers: unknown options are refused with what they meant, and
without the password; the client library's own options pass; Redis's path is its database.

Each needs its transport's extra (redis, rabbitmq, nats), not its server: nothing here
connects. The settings themselves, and the memory transport's URL, are tested in
tests/unit/test_config.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus import ConfigurationError, EventBus
from eventbus.transports import transport_from_url

# -- unknown options in a transport URL ------------------------------------------------------

REDIS_OWN = "batch, block, claim_idle, maxlen, prefix"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # eventbus's own options are listed with the client's, and a typo of either is named
        (
            "redis://:canary-pw@127.0.0.1:6379/0?prefx=shop:",
            (
                f"'prefx' (did you mean 'prefix'?); RedisStreamsTransport's options are "
                f"{REDIS_OWN}; redis-py's are client_name, db, health_check_interval"
            ),
        ),
        (
            "redis://:canary-pw@127.0.0.1:6379/0?claim_idel=5",
            "'claim_idel' (did you mean 'claim_idle'?)",
        ),
        (
            "redis://:canary-pw@127.0.0.1:6379/0?socket_timout=20",
            "'socket_timout' (did you mean 'socket_timeout'?)",
        ),
        (
            "amqp://guest:canary-pw@127.0.0.1:5672/?exchnge=shop",
            "'exchnge' (did you mean 'exchange'?); RabbitMQTransport's options are",
        ),
        (
            "amqp://guest:canary-pw@127.0.0.1:5672/?cafle=/ca.pem",
            "'cafle' (did you mean 'cafile'?)",
        ),
        ("nats://canary-pw@127.0.0.1:4222?strem=ORDERS", "'strem' (did you mean 'stream'?)"),
    ],
)
def test_an_unknown_url_option_lists_eventbus_options_too_with_what_it_meant(
    url: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match="has the unknown option") as caught:
        transport_from_url(url)
    assert expected in str(caught.value)
    assert "canary-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:canary-pw@127.0.0.1:6379/0?prefix=shop:&ssl_certfile=x&passwrd=canary-pw",
        "amqp://guest:canary-pw@127.0.0.1:5672/?pasword=canary-pw",
    ],
)
def test_an_unknown_url_option_error_shows_no_query_value(url: str) -> None:
    # A misspelt secret's name is not one redact() knows: the values stay out entirely.
    with pytest.raises(ConfigurationError) as caught:
        transport_from_url(url)
    assert "canary-pw" not in str(caught.value)


def test_the_client_librarys_own_query_options_still_pass() -> None:
    redis = transport_from_url("rediss://127.0.0.1:6379/0?ssl_cert_reqs=none&prefix=shop:")
    assert redis.prefix == "shop:"  # type: ignore[attr-defined]
    transport_from_url("amqp://guest:guest@127.0.0.1:5672/?name=shop&timeout=5&exchange=s")


@pytest.mark.parametrize("path", ["/abc", "/0/1", "/-1", "/0x1", "/db0"])
def test_a_redis_path_that_is_not_a_database_number_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match="the path is the database number") as caught:
        transport_from_url(f"redis://:canary-pw@127.0.0.1:6379{path}")
    assert repr(path) in str(caught.value)
    assert "canary-pw" not in str(caught.value)


@pytest.mark.parametrize(("path", "db"), [("", 0), ("/", 0), ("/0", 0), ("/7", 7), ("/12/", 12)])
def test_a_redis_database_number_is_taken(path: str, db: int) -> None:
    from redis.asyncio.connection import parse_url

    transport = transport_from_url(f"redis://127.0.0.1:6379{path}")
    assert parse_url(transport._url).get("db", 0) == db  # type: ignore[attr-defined]


def test_a_bad_redis_url_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTBUS_TRANSPORT_URL", "redis://:canary-pw@127.0.0.1:6379/abc")
    with pytest.raises(ConfigurationError) as caught:
        EventBus()
    text = str(caught.value)
    assert text.startswith("the environment variable EVENTBUS_TRANSPORT_URL: the Redis URL")
    assert "canary-pw" not in text
