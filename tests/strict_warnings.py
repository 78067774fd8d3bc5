"""The ``-W`` flags of an interpreter a test starts, read from pyproject.toml.

pytest's own run turns every warning into an error except the few third-party ones its
``filterwarnings`` lets pass (``starlette.testclient`` at the starlette floor, run with a
newer anyio, warns about anyio's own deprecated alias on import). A script or a pytest
run that a test starts in a subprocess gets the same list, in the same order, so a
warning fails there exactly when it fails here: the list lives in one place.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

FILTERS: list[str] = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["tool"]["pytest"][
    "ini_options"
]["filterwarnings"]
"""pytest's filters, which share the ``-W`` syntax (action:message:category:module)."""

FLAGS: list[str] = [flag for spec in FILTERS for flag in ("-W", spec)]
"""``["-W", "error", "-W", "ignore:...", ...]``: later flags take precedence, as in pytest."""
