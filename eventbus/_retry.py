"""RetryPolicy: when a failed handler runs again, built on tenacity's strategies as they are.

A policy is a pure decision: given the attempt number, the error and the time since the
first attempt, it returns how long to wait before the next attempt, or None to give up.
Keeping it pure lets the same policy drive in-process retries (a sleep on the runtime)
and durable ones (an ``available_at`` stored in the outbox, which survives a restart).

``Backoff`` paces the machinery's own retries, which are not a handler's and never give
up (reconnecting to a broker, subscribing again, publishing a row the broker did not
confirm): the one place those waits are computed, by the core and by the transports.
"""

from __future__ import annotations

import random
from typing import Any, cast

import attrs
import tenacity
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT

from .errors import ConfigurationError, RejectEvent, RetryLater, SerializationError

__all__ = ["Backoff", "RetryPolicy"]

# Never worth a retry: the same bytes will fail to decode or encode the same way again.
_NEVER_RETRY: tuple[type[BaseException], ...] = (SerializationError,)


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(
                f"retry_on and give_up_on take exception classes (or a tuple of them), got {item!r}"
            )
    return cast("tuple[type[BaseException], ...]", items)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How many times, how long apart, and on which errors a handler is tried again.

    ``stop`` and ``wait`` are tenacity strategies, composed as tenacity composes them::

        from tenacity import stop_after_attempt, stop_after_delay, wait_exponential_jitter

        RetryPolicy(
            stop=stop_after_attempt(5) | stop_after_delay(60),
            wait=wait_exponential_jitter(max=30),
            retry_on=(ConnectionError, TimeoutError),
            give_up_on=(PermissionError,),
        )

    An error is retried when it is an instance of ``retry_on`` and not of ``give_up_on``;
    ``SerializationError`` is never retried. ``RetryLater(delay)`` from a handler waits
    ``delay`` instead of ``wait`` but still counts towards ``stop``; ``RejectEvent`` gives
    up at once.
    """

    stop: StopBaseT = attrs.field(factory=lambda: tenacity.stop_after_attempt(3))
    # 0.1 s, 0.2 s, 0.4 s ... at most 10 s, plus up to 0.1 s of jitter so retries of many
    # deliveries do not fall into step (spelled so every tenacity >= 8.2 accepts it).
    wait: WaitBaseT = attrs.field(
        factory=lambda: (
            tenacity.wait_exponential(multiplier=0.1, max=10) + tenacity.wait_random(0, 0.1)
        )
    )
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )
    give_up_on: tuple[type[BaseException], ...] = attrs.field(
        default=(), converter=_exception_types
    )

    def __attrs_post_init__(self) -> None:
        if not callable(self.stop) or not callable(self.wait):
            raise ConfigurationError(
                "RetryPolicy stop and wait take tenacity strategies, "
                "e.g. stop=stop_after_attempt(5), wait=wait_exponential_jitter(max=30)"
            )

    @classmethod
    def never(cls) -> RetryPolicy:
        """Try once; a failure is final."""
        return cls(stop=tenacity.stop_after_attempt(1), wait=tenacity.wait_none())

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried at all (before counting attempts)."""
        if isinstance(error, RetryLater):
            return True
        if isinstance(error, (RejectEvent, *_NEVER_RETRY)):
            return False
        return isinstance(error, self.retry_on) and not isinstance(error, self.give_up_on)

    def next_delay(
        self, *, attempt: int, error: BaseException, elapsed: float, idle: float = 0.0
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` is the number of the attempt that just failed (1 for the first),
        ``elapsed`` the seconds since the first attempt started, ``idle`` the seconds
        already spent waiting between attempts.
        """
        if not self.retryable(error):
            return None
        state = _state(attempt=attempt, error=error, elapsed=elapsed, idle=idle)
        delay = error.delay if isinstance(error, RetryLater) else max(0.0, float(self.wait(state)))
        # tenacity decides the wait first, then asks stop (which may look at it).
        state.upcoming_sleep = delay
        if self.stop(state):
            return None
        return delay


def _state(*, attempt: int, error: BaseException, elapsed: float, idle: float) -> Any:
    """A tenacity RetryCallState that describes our attempt, for its strategies to read."""
    state = tenacity.RetryCallState(
        retry_object=cast("tenacity.BaseRetrying", None), fn=None, args=(), kwargs={}
    )
    state.attempt_number = attempt
    state.set_exception((type(error), error, error.__traceback__))
    # Our clock, not tenacity's: time since the first attempt is what stop_after_delay reads.
    state.start_time = 0.0
    state.outcome_timestamp = elapsed
    state.idle_for = idle
    return state


@attrs.frozen
class Backoff:
    """Waits that grow from ``first`` up to ``cap`` seconds, ``factor`` times each time (they
    double), for retries that never give up; ``jitter`` (0 to 1) takes up to that share off
    each wait, at random, so that many retriers (relays, consumers) do not fall into step::

        backoff = Backoff(first=0.2, cap=30.0, jitter=0.5)
        await asyncio.sleep(backoff.delay(failures))  # 0.1-0.2 s, 0.2-0.4 s, ... 15-30 s
    """

    first: float
    cap: float
    jitter: float = 0.0
    factor: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not (0 < self.first <= self.cap and 0 <= self.jitter <= 1 and self.factor >= 1):
            raise ConfigurationError(
                "Backoff needs 0 < first <= cap, 0 <= jitter <= 1 and factor >= 1, got "
                f"first={self.first!r}, cap={self.cap!r}, jitter={self.jitter!r}, "
                f"factor={self.factor!r}"
            )

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (0: the first retry)."""
        wait = self.first
        if self.factor > 1:
            for _ in range(failures):  # stops at the cap: a few steps, however many failures
                wait *= self.factor
                if wait >= self.cap:
                    wait = self.cap
                    break
        if self.jitter:
            wait *= 1.0 - random.uniform(0.0, self.jitter)  # noqa: S311 - jitter, not a secret
        return wait
