"""scripts/floors.py: the constraints the FLOORS=1 run installs through.

A floor run that cannot resolve fails CI before a test runs (Flask 3.1 needs blinker 1.9
while the core allows 1.8), so the pins must be installable together: one per name, the
highest floor any requirement of the chosen extras sets.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "floors.py"


@pytest.fixture
def floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("floors_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PYPROJECT", tmp_path / "pyproject.toml")
    return module


def _project(tmp_path: Path, body: str) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "eventbus"\n' + body, encoding="utf-8"
    )


def test_a_name_floored_twice_takes_the_higher_floor(floors: ModuleType, tmp_path: Path) -> None:
    _project(
        tmp_path,
        'dependencies = ["blinker>=1.8", "attrs>=23.1"]\n'
        "[project.optional-dependencies]\n"
        'flask = ["flask>=3.1", "blinker>=1.10"]\n',
    )
    assert floors.floors([]) == ["attrs==23.1", "blinker==1.8"]
    # 1.10 is above 1.9 and 1.8: compared as releases, not as text
    assert floors.floors(["flask"]) == ["attrs==23.1", "blinker==1.10", "flask==3.1"]


def test_a_requirement_without_a_readable_floor_is_refused(
    floors: ModuleType, tmp_path: Path
) -> None:
    _project(tmp_path, 'dependencies = ["blinker~=1.8"]\n')
    with pytest.raises(SystemExit, match=r"cannot read a floor in 'blinker~=1.8'"):
        floors.floors([])


def test_an_unknown_extra_is_named(floors: ModuleType, tmp_path: Path) -> None:
    _project(tmp_path, "dependencies = []\n[project.optional-dependencies]\nredis = []\n")
    with pytest.raises(SystemExit, match="no extra kafak"):
        floors.floors(["kafak"])


def test_the_project_floors_install_together() -> None:
    """Each name pinned once, at the highest floor pyproject.toml sets for it."""
    spec = importlib.util.spec_from_file_location("floors_real", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pins = module.floors(["dev", "flask", "django", "fastapi", "starlette"])
    names = [pin.split("==")[0] for pin in pins]
    assert len(names) == len(set(names))
    assert "blinker==1.9" in pins  # Flask 3.1's own floor, above the core's
