"""The codec's two readers agree, and its writer writes what json.dumps writes.

decode reads a message with msgspec and keeps the result only when the text was
canonical; anything else is read again by the standard library's json, the reference.
These tests check that both ways give the same envelopes and the same errors for any
input, that canonical messages never need the reference (the speed of decode), that
duplicate keys never slip through the fast reader, and that encode writes exactly what
json.dumps writes for the same document (the wire format).
"""

import importlib.util
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import _codec
from eventbus.errors import EncodeError

# The codec tests' registry and strategies, reused (a sibling module, not a package).
spec = importlib.util.spec_from_file_location("tc", Path(__file__).with_name("test_codec.py"))
tc = importlib.util.module_from_spec(spec)
sys.modules["tc"] = tc
spec.loader.exec_module(tc)

CODEC = tc.CODEC
S = settings(
    database=None, deadline=None, max_examples=400, suppress_health_check=list(HealthCheck)
)


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("err", type(exc), str(exc))


def fast_reader_off(_raw):
    raise ValueError("the fast reader is off in this test")


def by_reference(raw):
    with mock.patch.object(_codec, "_fast_read", fast_reader_off):
        return CODEC.decode(raw)


def reference_calls(raw):
    """How often decoding ``raw`` needed the reference reader, and the outcome."""
    with mock.patch.object(_codec, "_reference", wraps=_codec._reference) as spy:
        result = outcome(CODEC.decode, raw)
    return spy.call_count, result


def same_decode(raw):
    fast = outcome(CODEC.decode, raw)
    slow = outcome(by_reference, raw)
    if fast[0] == "ok":
        assert slow[0] == "ok", slow
        tc.assert_same(fast[1].event, slow[1].event)
        assert fast[1] == slow[1]
        for f in ("id", "correlation_id", "causation_id", "occurred_at", "key", "name", "version"):
            assert type(getattr(fast[1], f)) is type(getattr(slow[1], f))
        assert dict(fast[1].headers) == dict(slow[1].headers)
    else:
        assert fast == slow, (fast, slow)


def json_dumps_of(envelope):
    """The bytes json.dumps writes for the envelope's document: the wire format."""
    document = {
        "id": str(envelope.id),
        "name": envelope.name,
        "version": envelope.version,
        "occurred_at": envelope.occurred_at.isoformat(),
        "key": envelope.key,
        "correlation_id": str(envelope.correlation_id),
        "causation_id": None if envelope.causation_id is None else str(envelope.causation_id),
        "headers": dict(envelope.headers),
        "data": CODEC.encode_event(envelope.event),
    }
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: the whole message in ASCII
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


ENVELOPE_FIELDS = {
    "key": st.none() | st.text(tc.PRINTABLE, min_size=1, max_size=5),
    "headers": st.dictionaries(
        st.text(tc.PRINTABLE, min_size=1, max_size=3), st.text(tc.PRINTABLE, max_size=3), max_size=3
    ),
    "occurred_at": tc.AWARE | st.datetimes(timezones=st.just(UTC)),
    "causation_id": st.none() | st.uuids(),
}


@S
@given(tc.EVERYTHING, st.fixed_dictionaries(ENVELOPE_FIELDS))
def test_encode_writes_what_json_dumps_writes(event, fields):
    envelope = tc.envelope_of(event, **fields)

    raw = CODEC.encode(envelope)

    assert raw == json_dumps_of(envelope)
    same_decode(raw)
    same_decode(raw.decode())
    same_decode(bytearray(raw))


@pytest.mark.parametrize("where", ["key", "header", "data"])
def test_a_lone_surrogate_anywhere_gives_the_ascii_form(where):
    text = "Zoë \ud83d east"
    envelope = tc.envelope_of(
        tc.an_order(customer=text if where == "data" else "alice"),
        key=text if where == "key" else None,
        headers={"h": text} if where == "header" else {},
    )

    raw = CODEC.encode(envelope)

    assert raw == json_dumps_of(envelope)
    assert raw.isascii()
    assert CODEC.decode(raw) == envelope


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            "x",
            "12.5",
            "1e5",
            "NaN",
            " 1",
            "01890a5d-ac96-774b-bcce-b302099a8057",
            "{01890a5d-ac96-774b-bcce-b302099a8057}",
            "01890A5D-AC96-774B-BCCE-B302099A8057",
            "01890a5dac96774bbcceb302099a8057",
            "2024-05-01T12:30:00+00:00",
            "2024-05-01T12:30:00",
            "2024-05-01",
            "\ud800",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@S
@given(st.data())
def test_both_readers_agree_on_mutated_documents(data):
    doc = json.loads(CODEC.encode(tc.envelope_of(tc.an_order(), headers={"a": "b"}, key="k")))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["env", "data", "drop", "dropdata", "add"]))
        if where == "env":
            doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(VALUES)
        elif where == "data" and isinstance(doc.get("data"), dict) and doc["data"]:
            doc["data"][data.draw(st.sampled_from(sorted(doc["data"])))] = data.draw(VALUES)
        elif where == "drop" and doc:
            del doc[data.draw(st.sampled_from(sorted(doc)))]
        elif where == "dropdata" and isinstance(doc.get("data"), dict) and doc["data"]:
            del doc["data"][data.draw(st.sampled_from(sorted(doc["data"])))]
        elif where == "add":
            doc[data.draw(st.text(max_size=4))] = data.draw(VALUES)
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=data.draw(st.booleans())).encode(
        "utf-8", "surrogatepass"
    )
    same_decode(raw)
    same_decode(b" " + raw)
    same_decode(raw + b"\n")


def test_canonical_messages_need_no_second_reading():
    envelope = tc.envelope_of(
        tc.an_order(customer='Zoë 東京 "q" \n', weight=0.1),
        key="order-1",
        headers={"traceparent": "00-abc"},
        causation_id=tc.THIRD_ID,
    )
    raw = CODEC.encode(envelope)

    assert reference_calls(raw) == (0, ("ok", envelope))
    assert reference_calls(raw.decode()) == (0, ("ok", envelope))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda raw: b" " + raw, ()),
        (lambda raw: raw.replace(b'"alice"', b'"\\u0061lice"'), ()),
        (lambda raw: raw.replace(b'"00-abc"', b'"\\u00300-abc"'), ()),
        (lambda raw: raw.replace(b'"weight":0.1', b'"weight":1e+16'), ()),
        (lambda raw: raw[:-1] + b',"tenant":1}', ()),
        (lambda raw: raw.replace(b'"key":', b'"key":"k","key":'), ("'key' twice",)),
        (lambda raw: raw.replace(b'"qty":1', b'"qty":1,"qty":2'), ("'qty' twice",)),
        (lambda raw: raw.replace(b'{"traceparent"', b'{"a":"1","a":"1","traceparent"'), ("twice",)),
    ],
    ids=[
        "whitespace",
        "escaped letter",
        "escaped digit in a header",
        "exponent float",
        "unknown envelope key",
        "duplicate envelope key",
        "duplicate event field",
        "duplicate header",
    ],
)
def test_any_other_text_is_read_again_by_the_reference(change, words):
    envelope = tc.envelope_of(
        tc.an_order(weight=0.1), id=tc.ID, headers={"traceparent": "00-abc"}, key="order-1"
    )
    raw = change(CODEC.encode(envelope))

    calls, result = reference_calls(raw)

    assert calls == 1
    if words:
        assert result[0] == "err", result
        for word in words:
            assert word in result[2]
    else:
        assert result[0] == "ok", result
        assert result[1].id == envelope.id
        assert result[1].event.customer == "alice"


OFFSETS = st.integers(min_value=-86399, max_value=86399).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)


@S
@given(st.datetimes(timezones=st.just(UTC) | OFFSETS))
def test_the_envelope_time_is_its_isoformat(moment):
    # A UTC time is written by msgspec, any other by isoformat(): the same text.
    assert _codec._time_text(moment) == moment.isoformat()
    whole = moment.replace(microsecond=0)
    assert _codec._time_text(whole) == whole.isoformat()


def test_a_naive_envelope_time_is_refused():
    with pytest.raises(EncodeError, match="aware datetime"):
        _codec._time_text(datetime(2024, 5, 1))  # noqa: DTZ001 - naive on purpose
