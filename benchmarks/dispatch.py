"""Dispatch cost: eventbus against the hand-written floor, blinker and pyee.

One process, one run. Every sample of every row is taken in turn (interleaved), so a
noisy neighbour slows all rows alike, and each row keeps the minimum of its samples.
Each row is reported in ns per publish and as a ratio to its floor (the plain loop
``for h in handlers: h(event)``, or ``await h(event)`` for async rows).

Two situations:
  (a) nothing observes: only inline handlers, no hook receiver, no capture;
  (b) causation is tracked: a durable handler is subscribed for another event type, so
      a publish made inside an inline handler must be linked to its cause.

    python benchmarks/dispatch.py            # the table, and exit 1 if a target is missed
    python benchmarks/dispatch.py --quick    # fewer samples, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import blinker
from pyee import EventEmitter
from timing import measure, verdict  # beside this file

import eventbus
from eventbus import EventBus, EventRegistry

registry = EventRegistry()


@eventbus.event("bench.ping", registry=registry)
class Ping:
    n: int


@eventbus.event("bench.other", registry=registry)
class Other:
    n: int


PING = Ping(n=1)

# ratio targets per (situation, row, handlers)
TARGETS: dict[tuple[str, str, int], float] = {
    ("a", "eventbus publish", 1): 2.0,
    ("a", "eventbus publish", 10): 1.3,
    ("a", "eventbus apublish", 1): 2.2,
    ("a", "eventbus apublish", 10): 1.3,
    ("b", "eventbus publish", 1): 4.0,
    ("b", "eventbus publish", 10): 1.6,
    ("b", "eventbus apublish", 1): 4.0,
    ("b", "eventbus apublish", 10): 1.6,
}


def _sync_handlers(count: int) -> list[Callable[[Any], None]]:
    handlers: list[Callable[[Any], None]] = []
    for _ in range(count):

        def handler(event: Ping) -> None:
            pass

        handlers.append(handler)
    return handlers


def _async_handlers(count: int) -> list[Callable[[Any], Awaitable[None]]]:
    handlers: list[Callable[[Any], Awaitable[None]]] = []
    for _ in range(count):

        async def handler(event: Ping) -> None:
            pass

        handlers.append(handler)
    return handlers


def _bus(handlers: list[Callable[..., Any]], *, tracked: bool) -> EventBus:
    bus = EventBus(registry=registry)
    for index, handler in enumerate(handlers):
        bus.subscribe(Ping, name=f"h{index}")(handler)
    if tracked:

        def durable(event: Other) -> None:
            pass

        bus.subscribe(Other, name="durable", delivery="durable")(durable)
    return bus


def sync_rows(count: int, loops: int, *, tracked: bool) -> dict[str, Callable[[], float]]:
    handlers = _sync_handlers(count)
    fixed = tuple(handlers)
    bus = _bus(handlers, tracked=tracked)
    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(_blinker_adapter(handler), weak=False)
    emitter = EventEmitter()
    for handler in handlers:
        emitter.on("ping", handler)
    event = PING
    rng = range(loops)

    def floor() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            for handler in fixed:
                handler(event)
        return (time.perf_counter_ns() - start) / loops

    def publish() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            bus.publish(event)
        return (time.perf_counter_ns() - start) / loops

    def blinker_send() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            signal.send(event)
        return (time.perf_counter_ns() - start) / loops

    def pyee_emit() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            emitter.emit("ping", event)
        return (time.perf_counter_ns() - start) / loops

    return {
        "floor: for h in handlers: h(event)": floor,
        "eventbus publish": publish,
        "blinker send": blinker_send,
        "pyee emit": pyee_emit,
    }


def async_rows(count: int, loops: int, *, tracked: bool) -> dict[str, Callable[[], float]]:
    handlers = _async_handlers(count)
    fixed = tuple(handlers)
    bus = _bus(handlers, tracked=tracked)
    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(_blinker_async_adapter(handler), weak=False)
    event = PING
    rng = range(loops)
    loop = asyncio.new_event_loop()

    async def floor_body() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            for handler in fixed:
                await handler(event)
        return (time.perf_counter_ns() - start) / loops

    async def apublish_body() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            await bus.apublish(event)
        return (time.perf_counter_ns() - start) / loops

    async def blinker_body() -> float:
        start = time.perf_counter_ns()
        for _ in rng:
            await signal.send_async(event)
        return (time.perf_counter_ns() - start) / loops

    def run(body: Callable[[], Awaitable[float]]) -> Callable[[], float]:
        return lambda: loop.run_until_complete(body())

    return {
        "async floor: for h in handlers: await h(event)": run(floor_body),
        "eventbus apublish": run(apublish_body),
        "blinker send_async": run(blinker_body),
    }


def _blinker_adapter(handler: Callable[[Any], None]) -> Callable[..., None]:
    # blinker calls receiver(sender, **kwargs); the event travels as the sender.
    return handler


def _blinker_async_adapter(handler: Callable[[Any], Awaitable[None]]) -> Callable[..., Any]:
    return handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    samples = args.samples or (3 if args.quick else 31)
    loops = 2_000 if args.quick else 10_000

    print(
        f"Python {sys.version.split()[0]}, eventbus {eventbus.__version__}, "
        f"{samples} interleaved samples of {loops} publishes, minimum kept\n"
    )
    print(
        f"{'situation':<10} {'handlers':>8}  {'row':<48} {'ns/publish':>10} {'ratio':>6} "
        f"{'target':>7}"
    )
    missed = []
    for situation, tracked in (("a", False), ("b", True)):
        for count in (1, 10):
            for rows, floor_name in (
                (sync_rows(count, loops, tracked=tracked), "floor: for h in handlers: h(event)"),
                (
                    async_rows(count, loops, tracked=tracked),
                    "async floor: for h in handlers: await h(event)",
                ),
            ):
                best = measure(rows, samples, without_gc=True)
                floor = best[floor_name]
                eventbus_row = next(name for name in rows if name.startswith("eventbus"))
                for name, ns in best.items():
                    ratio = ns / floor
                    target = TARGETS.get((situation, name, count))
                    mark = ""
                    if target is not None:
                        mark = f"<={target:.1f}"
                        if ratio > target:
                            missed.append(f"({situation}) {name} with {count}: {ratio:.2f}x")
                    elif name != floor_name and ns <= best[eventbus_row]:
                        missed.append(
                            f"({situation}) {name} with {count} is not slower than eventbus"
                        )
                    print(
                        f"{situation:<10} {count:>8}  {name:<48} {ns:>10.1f} {ratio:>6.2f} "
                        f"{mark:>7}"
                    )
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
