"""The claim statements of the stores (``eventbus.outbox.claims``, and PostgreSQL's in
contrib), and the named parameters of the Django stores put in order."""

from __future__ import annotations

import pytest

from eventbus.outbox import claims as core


def test_named_parameters_become_positional_in_order_and_casts_stay() -> None:
    contrib = pytest.importorskip("eventbus_contrib._claims")
    sql, names = contrib.positional("SELECT :a, CAST(:b AS TEXT), x::int, :a")
    assert sql == "SELECT %s, CAST(%s AS TEXT), x::int, %s"
    assert names == ["a", "b", "a"]


def test_every_named_parameter_of_the_claims_is_given() -> None:
    contrib = pytest.importorskip("eventbus_contrib._claims")
    given = set(core.ClaimState().parameters("me", 10, 1.0, 2))
    statements = [core.claim_sql("o", "i", "NOW", per_key=per_key) for per_key in (1, 2)]
    statements += [
        contrib.postgresql_claim_sql("o", "i", "NOW", per_key=per_key, materialize=True)
        for per_key in (1, 2)
    ]
    statements += [
        core.window_sql("o", "i", "NOW"),
        contrib.postgresql_window_sql("o", "i", "NOW", materialize=True),
    ]
    for statement in statements:
        _, names = contrib.positional(statement.replace("''", ""))
        assert set(names) <= given, set(names) - given


def test_a_claim_reads_the_window_then_the_heads_and_keeps_to_the_heads_while_short() -> None:
    state = core.ClaimState()
    calls: list[tuple[str, int, int]] = []
    answers: dict[str, list[list[tuple[object, ...]]]] = {
        "window": [[(1, "x")] * 3, [(1, "x")] * 10],
        "heads": [[(2, "d", "k7")] * 2, [(2, "d", "k9")] * 10],
    }

    def execute(statement: str, parameters: dict[str, object]) -> list[tuple[object, ...]]:
        calls.append((statement, parameters["batch"], parameters["window"]))  # type: ignore[arg-type]
        return answers[statement].pop(0)

    assert len(state.claim(execute, "me", 10, 1.0, 1)) == 5  # a short window, then heads
    assert calls == [("window", 10, 40), ("heads", 7, 0)]
    assert (state.cursor, state.heads_first) == (("d", "k7"), True)
    assert len(state.claim(execute, "me", 10, 1.0, 1)) == 10  # heads first: a full batch
    assert calls[2:] == [("heads", 10, 0)]
    assert (state.cursor, state.heads_first) == (("d", "k9"), False)
    assert len(state.claim(execute, "me", 10, 1.0, 1)) == 10  # the window again: enough
    assert calls[3:] == [("window", 10, 40)]
