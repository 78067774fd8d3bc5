"""RetryPolicy: tenacity strategies decide, as tenacity would."""

from __future__ import annotations

import pytest
import tenacity

from eventbus import ConfigurationError, DecodeError, RejectEvent, RetryLater, RetryPolicy


def delays(policy: RetryPolicy, error: BaseException, *, attempts: int = 20) -> list[float]:
    """The waits the policy asks for, attempt after attempt, until it gives up."""
    waits: list[float] = []
    for number in range(1, attempts + 1):
        delay = policy.next_delay(attempt=number, error=error, elapsed=sum(waits), idle=sum(waits))
        if delay is None:
            return waits
        waits.append(delay)
    return waits


def test_stop_after_attempt_gives_exactly_n_attempts():
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_fixed(2))
    assert delays(policy, ValueError()) == [2, 2, 2]  # 3 waits between 4 attempts


def test_exponential_jitter_stays_in_its_bounds():
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(8),
        wait=tenacity.wait_exponential_jitter(max=10, jitter=0.5),
    )
    waits = delays(policy, ConnectionError())
    assert len(waits) == 7
    for number, wait in enumerate(waits, start=1):
        base = min(10, 1 * 2 ** (number - 1))
        assert base <= wait <= min(10, base + 0.5)


def test_stop_after_delay_reads_the_elapsed_time_we_give():
    policy = RetryPolicy(stop=tenacity.stop_after_delay(10), wait=tenacity.wait_fixed(3))
    assert policy.next_delay(attempt=1, error=ValueError(), elapsed=0) == 3
    assert policy.next_delay(attempt=4, error=ValueError(), elapsed=9.9) == 3
    assert policy.next_delay(attempt=5, error=ValueError(), elapsed=10) is None


def test_stop_before_delay_sees_the_upcoming_wait():
    policy = RetryPolicy(stop=tenacity.stop_before_delay(10), wait=tenacity.wait_fixed(3))
    assert policy.next_delay(attempt=1, error=ValueError(), elapsed=6.9) == 3
    assert policy.next_delay(attempt=2, error=ValueError(), elapsed=7) is None


def test_composed_strategies():
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(10) | tenacity.stop_after_delay(5),
        wait=tenacity.wait_fixed(1) + tenacity.wait_fixed(0.5),
    )
    assert delays(policy, ValueError()) == [1.5, 1.5, 1.5, 1.5]  # elapsed reaches 6 > 5


def test_retry_on_and_give_up_on():
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_none(),
        retry_on=(ConnectionError, TimeoutError),
        give_up_on=(ConnectionRefusedError,),
    )
    assert policy.next_delay(attempt=1, error=ConnectionResetError(), elapsed=0) == 0
    assert policy.next_delay(attempt=1, error=TimeoutError(), elapsed=0) == 0
    assert policy.next_delay(attempt=1, error=ConnectionRefusedError(), elapsed=0) is None
    assert policy.next_delay(attempt=1, error=ValueError(), elapsed=0) is None


def test_serialization_errors_and_rejections_are_never_retried():
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_none())
    assert policy.next_delay(attempt=1, error=DecodeError("bad"), elapsed=0) is None
    assert policy.next_delay(attempt=1, error=RejectEvent("no"), elapsed=0) is None


def test_retry_later_waits_its_own_delay_but_counts_towards_stop():
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(100),
        retry_on=(KeyError,),  # RetryLater is honoured whatever retry_on says
    )
    assert delays(policy, RetryLater(7.5)) == [7.5, 7.5]


def test_never():
    assert RetryPolicy.never().next_delay(attempt=1, error=ValueError(), elapsed=0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_on": ValueError()},
        {"retry_on": (ValueError, "KeyError")},
        {"give_up_on": int},
        {"stop": 3},
        {"wait": "fast"},
    ],
)
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_a_single_exception_class_is_accepted():
    assert RetryPolicy(retry_on=KeyError).retry_on == (KeyError,)


def test_retry_later_refuses_negative_delays():
    with pytest.raises(ValueError, match=">= 0"):
        RetryLater(-1)


# -- Backoff: the machinery's own waits (reconnecting, resubscribing, republishing) ---------


def test_a_backoff_doubles_from_first_up_to_its_cap():
    from eventbus.transports import Backoff

    backoff = Backoff(first=0.1, cap=5.0)
    assert [backoff.delay(n) for n in range(9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff.delay(10**9) == 5.0  # however long it has failed: no overflow, the cap


def test_a_backoff_grows_by_its_factor():
    from eventbus.transports import Backoff

    assert [Backoff(first=0.05, cap=1.0, factor=4.0).delay(n) for n in range(4)] == [
        0.05,
        0.2,
        0.8,
        1.0,
    ]
    assert {Backoff(first=0.3, cap=1.0, factor=1.0).delay(n) for n in range(50)} == {0.3}


def test_jitter_takes_at_most_its_share_off_each_wait():
    from eventbus.transports import Backoff

    backoff = Backoff(first=0.2, cap=30.0, jitter=0.5)
    for failures in range(12):
        full = min(30.0, 0.2 * 2**failures)
        waits = {backoff.delay(failures) for _ in range(50)}
        assert all(full * 0.5 <= wait <= full for wait in waits), (failures, waits)
        assert len(waits) > 1  # random: relays retrying together drift apart


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": 0.0, "cap": 1.0},
        {"first": -1.0, "cap": 1.0},
        {"first": 2.0, "cap": 1.0},
        {"first": 0.1, "cap": 1.0, "jitter": 1.5},
        {"first": 0.1, "cap": 1.0, "jitter": -0.1},
        {"first": 0.1, "cap": 1.0, "factor": 0.5},
    ],
    ids=repr,
)
def test_a_backoff_that_would_not_grow_sanely_is_refused(kwargs):
    from eventbus.transports import Backoff

    with pytest.raises(ConfigurationError, match="Backoff needs"):
        Backoff(**kwargs)
