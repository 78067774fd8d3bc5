"""Print a pip constraints file that pins every direct dependency at its floor.

``FLOORS=1 bash scripts/check`` installs through it, so the suite runs on the oldest
versions that ``pyproject.toml`` allows. A floor that no longer installs on the oldest
supported Python, or no longer passes, then fails CI instead of a user's install.

    python scripts/floors.py dev sqlalchemy ... > floors.txt   # the core and those extras

Every requirement must read ``name>=floor`` (or ``name==pin``): anything else is refused,
so a floor cannot hide behind a form this script does not read.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# name, optional [extras], then >= or == and one version: the forms pyproject.toml uses.
REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(>=|==)\s*(?P<version>[^\s,;]+)"
)


def floors(extras: list[str]) -> list[str]:
    """``name==floor`` for the core dependencies and those of ``extras``."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"floors.py: pyproject.toml has no extra {', '.join(unknown)}")
    pins: dict[str, str] = {}
    for requirement in [*project["dependencies"], *(r for e in extras for r in optional[e])]:
        match = REQUIREMENT.fullmatch(requirement.strip())
        if match is None:
            raise SystemExit(
                f"floors.py: cannot read a floor in {requirement!r}: write it as "
                "name>=version (or name==version for a pinned tool)"
            )
        name = match["name"].lower()
        if name == project["name"]:  # an extra made of other extras
            continue
        # A name floored twice (the core's blinker and the flask extra's, which Flask
        # itself needs newer) takes the higher floor: installed together, that is the least.
        if name not in pins or _release(match["version"]) > _release(pins[name]):
            pins[name] = match["version"]
    return sorted(f"{name}=={version}" for name, version in pins.items())


def _release(version: str) -> tuple[int, ...]:
    """``1.9`` as ``(1, 9)``: the floors are plain releases (no pre-release suffixes)."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    sys.stdout.write("".join(f"{pin}\n" for pin in floors(sys.argv[1:])))
