"""No extra installs a package that no code of ours uses.

``pip install "eventbus[x]"`` must buy the user something: every distribution an extra
names is imported by some module that ships (``eventbus`` or ``eventbus_contrib``),
counting every import statement, in functions and under ``TYPE_CHECKING`` too. The
``dev`` extra is the project's own tooling (pytest, mypy, ruff, the test broker), and
``all`` only names the other extras. Distribution names map to import names through the
installed distributions' metadata, or through ``IMPORT_NAMES`` where the package is not
installed here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "eventbus", ROOT / "contrib" / "eventbus_contrib")
NOT_FOR_USERS = {"dev", "all"}

IMPORT_NAMES = {
    "aio-pika": "aio_pika",
    "flask-sqlalchemy": "flask_sqlalchemy",
    "hiredis": "hiredis",
    "nats-py": "nats",
    "psycopg": "psycopg",
    "pymysql": "pymysql",
    "sqlalchemy": "sqlalchemy",
}
"""Distribution name (normalised) to import name, where they differ or the distribution
may not be installed where this runs."""

DRIVERS = {"psycopg": "postgresql", "pymysql": "mysql"}
"""Database drivers no module imports: SQLAlchemy loads them for URLs of a database our
SQLAlchemy stores serve (``postgresql+psycopg://``, ``mysql+pymysql://``), which is how
they are used. Each counts as used while that database is served."""

ACCELERATORS = {"hiredis": "redis"}
"""C parsers no module imports: the client library of the other name loads one when it is
installed (redis-py parses replies and packs commands with hiredis), which is how it is
used. Each counts as used while that library is imported."""

WAITING: dict[str, str] = {}
"""Extras whose module is being written elsewhere: each must still be unused (so the
entry is removed as soon as the module lands), with why."""


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extras() -> dict[str, list[str]]:
    """Each extra users install, and the distributions it names (without versions)."""
    document = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found: dict[str, list[str]] = {}
    for extra, requirements in document["project"]["optional-dependencies"].items():
        if extra in NOT_FOR_USERS:
            continue
        found[extra] = [
            _normalised(re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0])
            for requirement in requirements
        ]
    return found


def import_name(distribution: str) -> str:
    """The top-level module a distribution provides."""
    if distribution in IMPORT_NAMES:
        return IMPORT_NAMES[distribution]
    provided = {
        module
        for module, names in importlib.metadata.packages_distributions().items()
        if distribution in {_normalised(name) for name in names}
    }
    public = sorted(module for module in provided if not module.startswith("_"))
    return public[0] if len(public) == 1 else distribution.replace("-", "_")


def imported_by_us() -> set[str]:
    """The top-level modules every shipped module imports, anywhere in it (and the
    drivers of the databases the SQLAlchemy stores serve, and the C parsers of the
    client libraries imported)."""
    from eventbus_contrib.sqlalchemy._dialects import _BY_NAME

    names = {driver for driver, database in DRIVERS.items() if database in _BY_NAME}
    found: set[str] = set()
    for folder in SHIPPED:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    names |= found
    return names | {parser for parser, user in ACCELERATORS.items() if user in found}


def test_every_extra_installs_only_what_some_module_imports() -> None:
    used = imported_by_us()
    unused = {
        extra: [name for name in distributions if import_name(name) not in used]
        for extra, distributions in extras().items()
        if extra not in WAITING
    }
    assert {extra: names for extra, names in unused.items() if names} == {}


def test_the_extras_waiting_for_their_module_are_still_waiting() -> None:
    used = imported_by_us()
    for extra, why in WAITING.items():
        distributions = extras()[extra]
        assert all(import_name(name) not in used for name in distributions), (
            f"the {extra} extra is used now: {why}"
        )


def test_the_check_sees_what_it_must() -> None:
    # An extra naming a package nothing imports is caught (opentelemetry, before it
    # was removed), and one whose module imports its package passes.
    assert "opentelemetry" not in extras()
    used = imported_by_us()
    assert import_name("opentelemetry-api") not in used
    assert {"redis", "aiokafka", "sqlalchemy", "nats"} <= used
