"""A Kafka URL and the transport's options: where to connect, as whom, and how."""

from __future__ import annotations

import math
import re
import ssl
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

from eventbus import redact
from eventbus.errors import ConfigurationError

__all__ = ["DEFAULTS", "Endpoint", "Options", "endpoint", "options", "shown"]

_WORDS: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_HOST: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::\d{1,5})?")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_DEFAULT_PORT: Final = 9092
_MAX_TOPIC: Final = 249
"""Kafka's longest topic name."""


@attrs.frozen
class Options:
    prefix: str = "eventbus"
    partitions: int = 8
    replication: int = 1
    idempotent: bool = True
    batch: int = 100
    session_timeout: float = 10.0
    handback_wait: float = 10.0
    commit_interval: float = 0.2
    fetch_wait: float = 0.5
    publish_timeout: float = 30.0
    max_message_bytes: int = 1_048_576
    sasl_mechanism: str = "PLAIN"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    client_id: str = "eventbus"


DEFAULTS: Final[dict[str, Any]] = {a.name: a.default for a in attrs.fields(Options)}

_WHOLE = ("partitions", "replication", "batch", "max_message_bytes")
_SECONDS = ("session_timeout", "handback_wait", "commit_interval", "fetch_wait", "publish_timeout")
_TEXT = ("prefix", "sasl_mechanism", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "client_id")


def options(given: dict[str, Any]) -> Options:
    """Checked options (``url_options`` refused unknown names and typed the query's)."""
    for name in _TEXT:
        if name in given and not isinstance(given[name], str):
            raise ConfigurationError(
                f"KafkaTransport option {name} must be a string, got {given[name]!r}"
            )
    for name in _WHOLE:
        value = given.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"KafkaTransport option {name} must be a whole number of at least 1, got {value!r}"
            )
    for name in _SECONDS:
        value = given.get(name, 1.0)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigurationError(
                f"KafkaTransport option {name} must be a positive number of seconds, got {value!r}"
            )
    if not isinstance(given.get("idempotent", True), bool):
        raise ConfigurationError(
            f"KafkaTransport option idempotent must be true or false, got {given['idempotent']!r}"
        )
    chosen = Options(**given)
    if not _WORDS.fullmatch(chosen.prefix) or len(chosen.prefix) > 100:
        raise ConfigurationError(
            f"prefix={chosen.prefix!r}: a topic prefix is dot-separated words of letters, "
            "digits, '_' and '-' (at most 100 characters), as Kafka topic names take"
        )
    mechanism = chosen.sasl_mechanism.upper()
    if mechanism not in _MECHANISMS:
        raise ConfigurationError(
            f"sasl_mechanism={chosen.sasl_mechanism!r}: KafkaTransport takes "
            f"{', '.join(_MECHANISMS)}"
        )
    if chosen.session_timeout < 6:
        raise ConfigurationError(
            f"session_timeout={chosen.session_timeout}: Kafka brokers refuse less than 6 s "
            "(group.min.session.timeout.ms)"
        )
    return attrs.evolve(chosen, sasl_mechanism=mechanism)


@attrs.frozen
class Endpoint:
    """Where and as whom to connect, with the password kept out of every rendering."""

    tls: bool
    hosts: tuple[str, ...]
    user: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    def display(self) -> str:
        auth = f"{self.user}:***@" if self.user is not None else ""
        return f"{'kafkas' if self.tls else 'kafka'}://{auth}{','.join(self.hosts)}"

    def client_settings(self, chosen: Options) -> dict[str, Any]:
        """aiokafka's connection settings for this endpoint."""
        settings: dict[str, Any] = {
            "bootstrap_servers": list(self.hosts),
            "client_id": chosen.client_id,
        }
        if self.tls:
            context = ssl.create_default_context(cafile=chosen.ssl_cafile or None)
            if chosen.ssl_certfile:
                context.load_cert_chain(chosen.ssl_certfile, chosen.ssl_keyfile or None)
            settings["ssl_context"] = context
        if self.user is not None:
            settings["security_protocol"] = "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
            settings["sasl_mechanism"] = chosen.sasl_mechanism
            settings["sasl_plain_username"] = self.user
            settings["sasl_plain_password"] = self.password or ""
        else:
            settings["security_protocol"] = "SSL" if self.tls else "PLAINTEXT"
        return settings


def shown(url: str) -> str:
    """``url`` for an error: no user part, no query."""
    parts = urlsplit(url)
    auth = "***@" if "@" in parts.netloc else ""
    netloc = auth + parts.netloc.rpartition("@")[2]
    return redact(urlunsplit(parts._replace(netloc=netloc, query="", fragment="")))


def endpoint(url: object) -> Endpoint:
    if not isinstance(url, str):
        raise ConfigurationError(f"KafkaTransport takes a kafka:// URL, got a {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("kafka", "kafkas"):
        raise ConfigurationError(
            f"KafkaTransport takes kafka:// or kafkas:// URLs, got {shown(url)!r}"
        )
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"a Kafka URL has no path (the topic prefix is the prefix= option), got {shown(url)!r}"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    hosts = tuple(h.strip() for h in hostlist.split(",") if h.strip()) or ("127.0.0.1",)
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise ConfigurationError(f"{host!r} in {shown(url)!r} is not a host[:port]")
    hosts = tuple(h if re.search(r":\d+$", h) else f"{h}:{_DEFAULT_PORT}" for h in hosts)
    user = password = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name)
        password = unquote(secret) if colon else ""
    return Endpoint(scheme == "kafkas", hosts, user, password)


def topic_name(prefix: str, topic: str) -> str:
    """The Kafka topic of an event name: ``<prefix>.<name>``."""
    name = f"{prefix}.{topic}"
    if len(name) > _MAX_TOPIC:
        raise ConfigurationError(
            f"the Kafka topic {name[:60]!r}... would be {len(name)} characters; Kafka takes "
            f"{_MAX_TOPIC}: use a shorter prefix or event name"
        )
    return name


def is_topic(topic: object) -> bool:
    return isinstance(topic, str) and _WORDS.fullmatch(topic) is not None
