"""Python source generated per class: its fast JSON-text encoder and its fast decoder.

Like attrs, the codec writes Python source per class and compiles it once: field reads by
attribute name, one f-string for the whole object, and scalars checked and converted
inline, with no call per field. The generated code does exactly what the general code
does; whatever it does not expect, it hands to the general code (decode_slow on decode, the
dict-and-json.dumps path on encode), so the errors stay exactly the documented ones.

The generated source sees only the namespace dict ``_generate`` builds: every name it
uses is put there.
"""

from __future__ import annotations

import keyword
import math
import unicodedata
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import TYPE_CHECKING, Any

from ._scalars import _DECIMAL_TEXT, _MAX_DECIMAL_LENGTH
from ._wire import Converter, _expected, _text_of, _TooDeepError, _WireError

if TYPE_CHECKING:  # the class plan calls _generate once its fields are known
    from ._classes import _ClassPlan


# Scalars written inline by generated encoders. kind: (the check that the value is the
# usual type, its replacement field in the f-string). An exact int formats as its repr; the
# walrus keeps the text of a Decimal whose length the check has measured.
_INLINE_TEXT: dict[str, tuple[str, str]] = {
    "str": ("type({v}) is str", "{{_quote({v})}}"),
    "int": ("type({v}) is int", "{{{v}}}"),
    "bool": ("({v} is True or {v} is False)", '{{"true" if {v} else "false"}}'),
    "none": ("{v} is None", "null"),
    "float": ("(type({v}) is float and _isfinite({v}))", "{{{v}!r}}"),
    "decimal": (
        (
            f"(type({{v}}) is Decimal and {{v}}.is_finite()"
            f" and len(s{{v}} := str({{v}})) <= {_MAX_DECIMAL_LENGTH})"
        ),
        '"{{s{v}}}"',
    ),
}
# Scalars read inline by generated decoders. kind: (the check that the JSON value is
# exactly what the scalar's decoder accepts, the value it then returns). An int read for a
# float field stays a call.
_INLINE_READ: dict[str, tuple[str, str]] = {
    "str": ("type({v}) is str", "{v}"),
    "int": ("type({v}) is int", "{v}"),
    "bool": ("type({v}) is bool", "{v}"),
    "none": ("{v} is None", "{v}"),
    "decimal": (
        f"type({{v}}) is str and len({{v}}) <= {_MAX_DECIMAL_LENGTH} and _decimal_text({{v}})",
        "_Decimal({v})",
    ),
}


def _safe_name(name: str) -> bool:
    """Whether ``name`` reads as itself in source: Python NFKC-normalises identifiers."""
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and unicodedata.normalize("NFKC", name) == name
    )


def _generate(plan: _ClassPlan) -> tuple[Converter, Converter] | None:
    """Compile the fast text encoder and decoder of a class plan (None: keep the general
    ones, for field names that cannot be written into Python source as they are)."""
    for field in plan.fields:
        if not (_safe_name(field.name) and _safe_name(field.alias)):
            return None
    namespace: dict[str, Any] = {
        "cls": plan.cls,
        "label": plan.label,
        "slow": plan.decode_slow,
        "_quote": _quote,
        "_isfinite": math.isfinite,
        "_decimal_text": _DECIMAL_TEXT.fullmatch,
        "_Decimal": Decimal,
        "Decimal": Decimal,
        "_expected": _expected,
        "_TooDeepError": _TooDeepError,
        "_WireError": _WireError,
    }
    source = _text_source(plan, namespace) + "\n" + _decode_source(plan, namespace)
    code = compile(source, f"<eventbus codec for {plan.cls.__module__}.{plan.label}>", "exec")
    exec(code, namespace)  # noqa: S102 - built from field names checked to be identifiers
    return namespace["text"], namespace["decode"]


def _text_source(plan: _ClassPlan, namespace: dict[str, Any]) -> str:
    """``text(value, depth)``: the object as one f-string, '{"a":' + the JSON of field a +
    ',"b":' ... + '}'; scalars of their usual type inline, anything else through the
    field's text writer. Wire names are identifiers: their JSON text needs no escaping in
    an f-string (no quote, backslash or brace)."""
    reads, checks, fast, general = [], [], [], []
    for index, (field, field_plan) in enumerate(zip(plan.fields, plan.plans, strict=True)):
        v = f"v{index}"
        key = ("{{" if index == 0 else ",") + _quote(field.wire) + ":"
        reads.append(f"    {v} = value.{field.name}")
        if field_plan.owner is not None:
            namespace[f"P{index}"] = field_plan.owner
            call = f"{{P{index}.fast_text({v}, depth)}}"
        else:
            namespace[f"t{index}"] = _text_of(field_plan)
            call = f"{{t{index}({v}, depth)}}"
        general.append(key + call)
        inline = _INLINE_TEXT.get(field_plan.kind)
        if inline is None:
            fast.append(key + call)
        else:
            checks.append(inline[0].format(v=v))
            fast.append(key + inline[1].format(v=v))
    lines = [
        "def text(value, depth):",
        "    if type(value) is not cls:",
        "        raise _expected(label, value)",
        "    if depth <= 0:",
        "        raise _TooDeepError",
        "    depth -= 1",
        *reads,
    ]
    if checks:
        lines.append(f"    if {' and '.join(checks)}:")
        lines.append("        return f'" + "".join(fast) + "}}'")
    lines.append("    return f'" + "".join(general) + "}}'" if general else "    return '{}'")
    return "\n".join(lines) + "\n"


def _decode_source(plan: _ClassPlan, namespace: dict[str, Any]) -> str:
    """``decode(value, depth)``: for an object with exactly the class's fields, read each
    by key, check and pass scalars inline, convert the rest through their decoders, then
    call the class. Anything else (absent, unknown or mistyped fields) goes to ``slow``,
    the general decoder, which says what is wrong."""
    fields = plan.fields
    lines = [
        "def decode(value, depth):",
        f"    if type(value) is not dict or len(value) != {len(fields)} or depth <= 0:",
        "        return slow(value, depth)",
    ]
    if fields:
        lines.append("    try:")
        lines += [f"        v{index} = value[{field.wire!r}]" for index, field in enumerate(fields)]
        lines += ["    except KeyError:", "        return slow(value, depth)"]
    checks, converted, arguments = [], [], []
    for index, (field, field_plan) in enumerate(zip(fields, plan.plans, strict=True)):
        v = f"v{index}"
        read = _INLINE_READ.get(field_plan.kind)
        if read is not None:
            checks.append(read[0].format(v=v))
            if read[1] == "{v}":
                arguments.append(f"{field.alias}={v}")
            else:  # before the constructor's try: a failure here is not the class's
                converted.append(f"    a{index} = {read[1].format(v=v)}")
                arguments.append(f"{field.alias}=a{index}")
            continue
        if field_plan.owner is not None:
            namespace[f"P{index}"] = field_plan.owner
            call = f"P{index}.fast_decode({v}, depth - 1)"
        else:
            namespace[f"d{index}"] = field_plan.decode
            call = f"d{index}({v}, depth - 1)"
        # In field order, as the general decoder reads them: the same first error.
        converted += [
            "    try:",
            f"        a{index} = {call}",
            "    except _WireError as exc:",
            f"        exc.at({'.' + field.wire!r})",
            "        raise",
        ]
        arguments.append(f"{field.alias}=a{index}")
    if checks:
        lines.append(f"    if not ({' and '.join(checks)}):")
        lines.append("        return slow(value, depth)")
    lines += converted
    lines += [
        "    try:",
        f"        return cls({', '.join(arguments)})",
        "    except (TypeError, ValueError) as exc:",
        "        # The class's own validators and converters have the last word on the data.",
        '        raise _WireError(f"{label} refused the data: {exc}") from exc',
    ]
    return "\n".join(lines) + "\n"
