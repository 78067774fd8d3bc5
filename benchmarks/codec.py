"""Codec cost: the pieces of a durable publish and of a relayed row, in ns per operation.

One process, interleaved samples (the minimum of each kept), ratios in the same run:

  uuid7            eventbus.uuid7() (against str(uuid.uuid4()), what a hand-written
                   INSERT pays for its id)
  Envelope(...)    the public, validating constructor
  build envelope   what a publish pays for its envelope: id, timestamp, construction
                   (envelope_of on a fresh frame, as the bus calls it)
  encode           JSONCodec.encode of the envelope of a 4-field event
  decode           JSONCodec.decode of those bytes
  json.dumps/loads the same document as a plain dict (json.dumps with its defaults, as
                   hand-written code calls it; json.loads of the very bytes decode reads):
                   the floor for encode and decode

With ``--against DIR``, the eventbus package in DIR (a checkout of another commit, e.g.
``git archive main eventbus | tar -x -C DIR``) is loaded beside this one under another
name, and its encode and decode of the same envelope are sampled in the same rounds:
the ratios then compare the two codecs on the same machine at the same moment.

    python benchmarks/codec.py [--quick] [--samples N] [--against DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType, SimpleNamespace

import eventbus
from eventbus import EventRegistry, JSONCodec
from eventbus._causation import envelope_of
from eventbus._envelope import Envelope, uuid7

registry = EventRegistry()


@eventbus.event("bench.order_placed", registry=registry)
class OrderPlaced:
    order_id: str
    customer: str
    total: Decimal
    quantity: int


EVENT = OrderPlaced(order_id="o-1", customer="alice", total=Decimal("12.50"), quantity=2)
CODEC = JSONCodec(registry)
ROUTE = SimpleNamespace(info=registry.info(OrderPlaced))
ENVELOPE = envelope_of([EVENT, ROUTE, None])
RAW = CODEC.encode(ENVELOPE)
DOCUMENT = json.loads(RAW)
NOW = datetime.now(UTC)


def cases() -> dict[str, Callable[[], object]]:
    envelope_id = ENVELOPE.id
    event = EVENT
    info = ROUTE.info
    encode = CODEC.encode
    decode = CODEC.decode
    dumps = json.dumps
    loads = json.loads
    document = DOCUMENT
    raw = RAW
    now = NOW
    route = ROUTE

    def uuid4_str() -> object:
        return str(uuid.uuid4())

    def construct() -> object:
        return Envelope(
            id=envelope_id,
            name=info.name,
            version=info.version,
            occurred_at=now,
            event=event,
            correlation_id=envelope_id,
        )

    def build() -> object:
        # What a durable publish does: a fresh frame, its envelope built on first need.
        return envelope_of([event, route, None])

    def build_and_encode() -> object:
        return encode(envelope_of([event, route, None]))

    def hand_payload() -> object:
        # What benchmarks/outbox.py's hand-written INSERT computes per row.
        return (
            str(uuid.uuid4()),
            dumps(
                {
                    "order_id": event.order_id,
                    "customer": event.customer,
                    "total": str(event.total),
                    "quantity": event.quantity,
                }
            ).encode(),
        )

    return {
        "uuid7()": uuid7,
        "str(uuid4()) [floor]": uuid4_str,
        "Envelope(...) public": construct,
        "build envelope (publish)": build,
        "encode": lambda: encode(ENVELOPE),
        "json.dumps(dict).encode() [floor]": lambda: dumps(document).encode(),
        "decode": lambda: decode(raw),
        "json.loads(bytes) [floor]": lambda: loads(raw),
        "build + encode (publish)": build_and_encode,
        "hand uuid4 + dumps [floor]": hand_payload,
    }


def load_before(directory: str) -> ModuleType:
    """The eventbus package in ``directory``, imported as ``eventbus_before``."""
    package = Path(directory) / "eventbus"
    spec = importlib.util.spec_from_file_location(
        "eventbus_before", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no eventbus package in {directory}")
    sys.dont_write_bytecode = True  # leave the other tree as it is
    module = importlib.util.module_from_spec(spec)
    sys.modules["eventbus_before"] = module  # its relative imports resolve under this name
    spec.loader.exec_module(module)
    return module


def cases_before(before: ModuleType) -> dict[str, Callable[[], object]]:
    """Encode and decode of the same envelope by the codec of the other tree."""
    other = before.EventRegistry()
    cls = before.event("bench.order_placed", registry=other)(
        type("OrderPlaced", (), {"__annotations__": dict(OrderPlaced.__annotations__)})
    )
    event = cls(order_id="o-1", customer="alice", total=Decimal("12.50"), quantity=2)
    envelope = before.Envelope(
        id=ENVELOPE.id,
        name=ENVELOPE.name,
        version=ENVELOPE.version,
        occurred_at=ENVELOPE.occurred_at,
        event=event,
        correlation_id=ENVELOPE.correlation_id,
    )
    codec = before.JSONCodec(other)
    if codec.encode(envelope) != RAW:
        raise SystemExit("the two codecs write different bytes for the same envelope")
    encode, decode, raw = codec.encode, codec.decode, RAW
    return {"encode (before)": lambda: encode(envelope), "decode (before)": lambda: decode(raw)}


def sample(function: Callable[[], object], loops: int) -> float:
    """ns per call over ``loops`` calls."""
    counter = time.perf_counter_ns
    start = counter()
    for _ in range(loops):
        function()
    return (counter() - start) / loops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer loops, for a smoke run")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--against", metavar="DIR", help="also time the codec of DIR/eventbus")
    args = parser.parse_args()
    loops = 2_000 if args.quick else 20_000
    samples = args.samples or (5 if args.quick else 15)
    table = cases()
    if args.against:
        table.update(cases_before(load_before(args.against)))
    assert CODEC.decode(RAW) == ENVELOPE
    best = dict.fromkeys(table, float("inf"))
    for function in table.values():
        sample(function, loops // 10)  # warm up
    for _ in range(samples):
        for name, function in table.items():  # interleaved: drift hits every row alike
            best[name] = min(best[name], sample(function, loops))
    print(f"Python {sys.version.split()[0]}, {samples} samples of {loops} loops, min kept\n")
    print(f"{'operation':<36} {'ns/op':>8}")
    for name, ns in best.items():
        print(f"{name:<36} {ns:>8.0f}")
    ratios = {
        "uuid7 / str(uuid4)": ("uuid7()", "str(uuid4()) [floor]"),
        "encode / json.dumps": ("encode", "json.dumps(dict).encode() [floor]"),
        "decode / json.loads": ("decode", "json.loads(bytes) [floor]"),
        "build + encode / hand uuid4 + dumps": (
            "build + encode (publish)",
            "hand uuid4 + dumps [floor]",
        ),
    }
    if args.against:
        ratios["encode / encode (before)"] = ("encode", "encode (before)")
        ratios["decode / decode (before)"] = ("decode", "decode (before)")
    print(f"\n{'ratio':<36} {'x':>8}")
    for label, (ours, floor) in ratios.items():
        print(f"{label:<36} {best[ours] / best[floor]:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
