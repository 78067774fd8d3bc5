"""Integrations stand on the public surface: nothing private of ``eventbus`` is imported.

contrib is what a third party would write (a store, a transport): if it needs a private
name, so would they, and the name should be public. The walk reads every import of every
module, those under ``TYPE_CHECKING`` and inside functions too, and any string naming a
private module (what ``importlib.import_module`` would load). The third-party store and
transport of the tests (``tests/third_party.py``) are held to the same rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "eventbus_contrib"
THIRD_PARTY = ROOT / "tests" / "third_party.py"

_PRIVATE = re.compile(r"^eventbus(\.\w+)*\._\w*")


def _private(module: str) -> bool:
    """Whether ``module`` is private to eventbus (a ``_`` component below ``eventbus``)."""
    parts = module.split(".")
    return parts[0] == "eventbus" and any(part.startswith("_") for part in parts[1:])


def private_imports(path: Path) -> list[str]:
    """What ``path`` takes from eventbus's private modules: ``line: module[.name]``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _private(node.module):
                found.append(f"{node.lineno}: {node.module}")
            elif node.module.split(".")[0] == "eventbus":
                # from eventbus import _handlers, or from eventbus.outbox import _relay
                named = [a.name for a in node.names if a.name.startswith("_")]
                found += [f"{node.lineno}: {node.module}.{name}" for name in named]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _PRIVATE.match(node.value)
            and " " not in node.value
        ):
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def modules() -> list[Path]:
    return sorted(CONTRIB.rglob("*.py"))


def test_there_is_contrib_to_walk() -> None:
    names = {path.name for path in modules()}
    assert {"redis.py", "rabbitmq.py", "nats.py"} <= names


@pytest.mark.parametrize("path", [*modules(), THIRD_PARTY], ids=lambda p: p.name)
def test_nothing_private_of_eventbus_is_imported(path: Path) -> None:
    assert private_imports(path) == [], (
        f"{path.relative_to(ROOT)} imports private eventbus modules; give what it needs a "
        "public name (eventbus.typing for protocols, eventbus.outbox / eventbus.transports "
        "for values, eventbus.redact for masking)"
    )


def test_the_walk_sees_every_kind_of_private_import(tmp_path: Path) -> None:
    """The check itself: each spelling is caught, public names are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import eventbus._bus\n"
        "from eventbus._handlers import Handler\n"
        "from eventbus import _records\n"
        "from eventbus.outbox import _relay\n"
        "from eventbus import redact, EventBus\n"
        "from eventbus.typing import OutboxStore\n"
        "if TYPE_CHECKING:\n"
        "    from eventbus.transports._link import TransportLink\n"
        "def later():\n"
        "    import importlib\n"
        "    return importlib.import_module('eventbus._delivery')\n",
        encoding="utf-8",
    )
    assert private_imports(sample) == [
        "2: eventbus._bus",
        "3: eventbus._handlers",
        "4: eventbus._records",
        "5: eventbus.outbox._relay",
        "9: eventbus.transports._link",
        "12: 'eventbus._delivery'",
    ]
