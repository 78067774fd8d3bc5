"""The claim statements of the stores: one SQLite text for every SQLite store, and the
named parameters of the Django stores put in order."""

from __future__ import annotations

import pytest

from eventbus.outbox import _claims as core


def test_the_sqlalchemy_and_django_sqlite_claims_are_the_stdlib_stores_own() -> None:
    # contrib may not import eventbus's private modules: it keeps a copy of the SQLite
    # claim, which must not drift from the one of eventbus.outbox.SQLiteOutbox.
    contrib = pytest.importorskip("eventbus_contrib._claims")
    for per_key in (1, 2):
        for inbox in ("eventbus_inbox", None):
            assert contrib.claim_sql("t_outbox", inbox, "NOW", per_key=per_key) == core.claim_sql(
                "t_outbox", inbox, "NOW", per_key=per_key
            )
    assert contrib.WINDOW == core.WINDOW


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
    for statement in statements:
        _, names = contrib.positional(statement.replace("''", ""))
        assert set(names) <= given, set(names) - given


def test_the_claim_state_goes_heads_first_after_a_short_window_and_back() -> None:
    state = core.ClaimState()
    assert state.parameters("me", 10, 1.0, 1)["window"] == 40
    scanned = [(1, "d", "k7")]  # rows end with where the heads scan stopped
    state.update(scanned, 10)
    assert (state.cursor, state.heads_first) == (("d", "k7"), True)
    assert state.parameters("me", 10, 1.0, 1)["window"] == 0
    state.update(scanned * 10, 10)  # a full batch: keys are many again
    assert state.heads_first is False
    state.update([(1, None, None)], 10)  # the window alone: no scan, the cursor stays
    assert (state.cursor, state.heads_first) == (("d", "k7"), False)
