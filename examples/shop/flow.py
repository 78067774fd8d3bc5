"""What happened, as the bus's hooks saw it: every event, and what each handler made of it.

Hooks observe and never decide: recording here changes no delivery. Receivers run in the
thread that did the step (the caller's, the relay's workers), hence the lock.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from types import TracebackType
from typing import Any, Self

import attrs

from eventbus import Envelope, EventBus, hooks

__all__ = ["FlowRecorder", "Step"]


@attrs.define
class Step:
    envelope: Envelope
    outcomes: list[str] = attrs.Factory(list)
    """What handlers did with it, in order: ``name ok``, a retry, a dead letter."""


class FlowRecorder:
    """Records every publish on ``bus`` while entered (``with FlowRecorder(bus) as flow``)."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._steps: dict[uuid.UUID, Step] = {}
        self._stack = contextlib.ExitStack()
        self._inline = {h.name for h in bus.handlers if h.delivery == "inline"}

    def __enter__(self) -> Self:
        for signal, receiver in (
            (hooks.event_published, self._published),
            (hooks.event_handled, self._handled),
            (hooks.handler_failed, self._failed),
            (hooks.handler_retrying, self._retrying),
            (hooks.event_dead_lettered, self._dead_lettered),
        ):
            self._stack.enter_context(signal.connected_to(receiver, sender=self._bus))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    def steps(self) -> list[Step]:
        """Every event recorded, in publish order."""
        with self._lock:
            return list(self._steps.values())

    def _note(self, envelope: Envelope, outcome: str) -> None:
        with self._lock:
            step = self._steps.get(envelope.id)
            if step is None:  # published before recording began, or in another process
                step = self._steps[envelope.id] = Step(envelope)
            step.outcomes.append(outcome)

    def _published(self, _bus: EventBus, *, envelope: Envelope, **_: Any) -> None:
        with self._lock:
            self._steps.setdefault(envelope.id, Step(envelope))

    def _handled(self, _bus: EventBus, *, envelope: Envelope, handler: str, **_: Any) -> None:
        self._note(envelope, f"{handler} ok")

    def _failed(
        self, _bus: EventBus, *, envelope: Envelope, handler: str, error: Exception, **_: Any
    ) -> None:
        # Non-inline failures are told by the retry or the dead letter that follows.
        if handler in self._inline:
            self._note(envelope, f"{handler} raised {type(error).__name__} to the publisher")

    def _retrying(
        self,
        _bus: EventBus,
        *,
        envelope: Envelope,
        handler: str,
        error: Exception,
        attempt: int,
        delay: float,
        **_: Any,
    ) -> None:
        self._note(
            envelope,
            f"{handler} attempt {attempt} failed ({type(error).__name__}), retry in {delay:.1f}s",
        )

    def _dead_lettered(
        self, _bus: EventBus, *, envelope: Envelope, handler: str, error: Exception, **_: Any
    ) -> None:
        self._note(envelope, f"{handler} gave up ({type(error).__name__}): dead letter")
