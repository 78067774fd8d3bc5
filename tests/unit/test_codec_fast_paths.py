"""Fast paths vs general paths: same bytes, same envelopes, same errors."""

import importlib.util
import json
import sys
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The codec tests' registry and strategies, reused (a sibling module, not a package).
spec = importlib.util.spec_from_file_location("tc", Path(__file__).with_name("test_codec.py"))
tc = importlib.util.module_from_spec(spec)
sys.modules["tc"] = tc
spec.loader.exec_module(tc)
from eventbus._codec._envelope_fields import _time_text  # noqa: E402 - after tc
from eventbus._codec._scalars import _uuid_text  # noqa: E402 - after tc

CODEC = tc.CODEC
S = settings(
    database=None, deadline=None, max_examples=400, suppress_health_check=list(HealthCheck)
)


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("err", type(exc), str(exc))


def same_encode(envelope):
    fast = outcome(CODEC.encode, envelope)
    general = outcome(CODEC._encode_general, envelope)
    assert fast == general, (fast, general)
    # and the text path, when it succeeds, writes the general bytes
    try:
        text = CODEC._encode_text(envelope)
    except Exception:
        return fast
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        return fast
    if general[0] == "ok":
        assert raw == general[1]
    return fast


def same_decode(raw):
    fast = outcome(CODEC.decode, raw)

    def general(raw):
        return CODEC._decode_general(CODEC._parse(raw))

    slow = outcome(general, raw)
    if fast[0] == "ok":
        assert slow[0] == "ok", slow
        tc.assert_same(fast[1].event, slow[1].event)
        assert fast[1] == slow[1]
        for f in ("id", "correlation_id", "causation_id", "occurred_at", "key", "name", "version"):
            assert getattr(fast[1], f) == getattr(slow[1], f)
            assert type(getattr(fast[1], f)) is type(getattr(slow[1], f))
        assert dict(fast[1].headers) == dict(slow[1].headers)
        assert type(fast[1].headers) is type(slow[1].headers)
    else:
        assert fast == slow, (fast, slow)


@S
@given(
    tc.EVERYTHING,
    st.none() | st.text(max_size=5),
    st.dictionaries(
        st.text(tc.PRINTABLE, min_size=1, max_size=3), st.text(tc.PRINTABLE, max_size=3), max_size=3
    ),
    tc.AWARE,
    st.none() | st.uuids(),
)
def test_everything(event, key, headers, occurred_at, causation):
    env = (
        tc.envelope_of(
            event, key=key, headers=headers, occurred_at=occurred_at, causation_id=causation
        )
        if (key is None or key)
        else tc.envelope_of(event)
    )
    r = same_encode(env)
    if r[0] == "ok":
        same_decode(r[1])
        same_decode(r[1].decode())
        same_decode(bytearray(r[1]))


@S
@given(st.datetimes(timezones=st.just(UTC)) | tc.AWARE | st.datetimes())
def test_times(dt):
    if dt.utcoffset() is None:
        with pytest.raises(Exception):
            _time_text(dt)
    else:
        assert _time_text(dt) == dt.isoformat()


@S
@given(st.uuids())
def test_uuids(u):
    assert _uuid_text(u) == str(u)


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
def test_mutated_documents(data):
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


def test_dup_keys_nested():
    raw = CODEC.encode(tc.envelope_of(tc.an_order()))
    bad = raw.replace(b'"customer":"alice"', b'"customer":"alice","customer":"bob"')
    same_decode(bad)
    with pytest.raises(Exception, match="twice"):
        CODEC.decode(bad)
