"""The README's Python snippets run as written, and pass ``mypy --strict``.

Every ```` ```python ```` block of README.md is a program. The first one, the quick start,
is the context of the others: a block may use the names the quick start defines or
imports, as a reader who has just read it would (``OrderPlaced``, ``Decimal``, ...); it
gets exactly those it uses and does not bind itself, the imports copied, the rest imported
from the quick start run as a module. Each block then runs in a fresh interpreter, in a
directory of its own, with warnings as errors: it must exit 0 and write nothing to stderr
(a failing after-commit or durable handler is logged there). All of them are checked
together by ``mypy --strict`` with the project's settings.

A block that cannot run alone (a piece of a larger program, or one that needs a server)
is marked with an HTML comment on the line before its fence, saying why::

    <!-- fragment: the application's engine and its Order model come from elsewhere -->

Keep such marks rare.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from eventbus import DeadLetter
from tests.strict_warnings import FLAGS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
QUICK_START = "readme_quickstart"
FRAGMENT = re.compile(r"<!--\s*fragment\b.*-->")


@attrs.frozen
class Block:
    line: int
    """The README line of the block's first line of code."""
    code: str
    fragment: bool

    @property
    def module(self) -> str:
        return f"readme_line_{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```` ```python ```` blocks of ``text``, in order."""
    lines = text.splitlines(keepends=True)
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if lines[index].rstrip() == "```python":
            end = index + 1
            while lines[end].rstrip() != "```":
                end += 1
            before = index - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marked = before >= 0 and FRAGMENT.fullmatch(lines[before].strip()) is not None
            blocks.append(Block(index + 2, "".join(lines[index + 1 : end]), marked))
            index = end
        index += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _bound(tree: ast.AST) -> set[str]:
    """Every name ``tree`` binds anywhere (over-approximated: nested scopes count too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(_import_binding(alias) for alias in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _import_binding(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def _quick_start_names(code: str) -> tuple[dict[str, str], set[str]]:
    """What the quick start makes available: imports (name to the statement that binds
    it) and the names it defines itself."""
    imports: dict[str, str] = {}
    defined: set[str] = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports[_import_binding(alias)] = f"import {ast.unparse(alias)}"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imports[_import_binding(alias)] = f"from {node.module} import {ast.unparse(alias)}"
        else:
            defined |= _bound(node)
    return imports, defined


def program(block: Block) -> tuple[str, int]:
    """``block`` as a module: the names it takes from the quick start, then its code; and
    how many lines come before the code."""
    quick_start = BLOCKS[0]
    if block is quick_start:
        return block.code, 0
    tree = ast.parse(block.code)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    wanted = sorted(used - _bound(tree) - set(dir(builtins)))
    imports, defined = _quick_start_names(quick_start.code)
    lines = [imports[name] for name in wanted if name in imports]
    taken = [name for name in wanted if name in defined]
    if taken:
        lines.append(f"from {QUICK_START} import {', '.join(taken)}")
    prelude = "".join(f"{line}  # from the quick start\n" for line in lines)
    return prelude + block.code, len(lines)


def _environment() -> dict[str, str]:
    """This environment without eventbus settings (a block must not pick up the test's)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS")}


RUNNABLE = [block for block in BLOCKS if not block.fragment]


def test_the_readme_has_python_blocks_and_most_run() -> None:
    assert BLOCKS, "no ```python blocks found in README.md"
    assert not BLOCKS[0].fragment, "the quick start must run: it is the others' context"
    assert len(RUNNABLE) > len(BLOCKS) / 2, "fragment marks are for the rare block"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: f"README.md:{block.line}")
def test_each_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    (tmp_path / f"{QUICK_START}.py").write_text(BLOCKS[0].code, encoding="utf-8")
    code, _ = program(block)
    script = tmp_path / f"{block.module}.py"
    script.write_text(code, encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, *FLAGS, str(script)],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    where = f"the block at README.md:{block.line}"
    assert ran.returncode == 0, f"{where} failed:\n{ran.stderr}"
    assert ran.stderr == "", f"{where} wrote to stderr:\n{ran.stderr}"


def test_every_block_passes_mypy_strict(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    modules = tmp_path / "readme"
    modules.mkdir()
    (modules / f"{QUICK_START}.py").write_text(BLOCKS[0].code, encoding="utf-8")
    offsets: dict[str, tuple[Block, int]] = {}
    for block in RUNNABLE:
        code, prelude = program(block)
        (modules / f"{block.module}.py").write_text(code, encoding="utf-8")
        offsets[f"{block.module}.py"] = (block, prelude)
    # pytest's cache (when its plugin is on) keeps mypy's cache between runs: much faster.
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("readme-mypy") if cache is not None else tmp_path / "mypy-cache"
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir",
            str(cache_dir),
            *sorted(str(path) for path in modules.glob("readme_line_*.py")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if checked.returncode != 0:
        pytest.fail("mypy --strict refuses README blocks:\n" + _on_readme_lines(checked, offsets))


def _on_readme_lines(
    checked: subprocess.CompletedProcess[str], offsets: dict[str, tuple[Block, int]]
) -> str:
    """mypy's report with README.md line numbers in place of the modules'."""
    shown: list[str] = []
    for line in (checked.stdout + checked.stderr).splitlines():
        found = re.match(r"(?:.*[/\\])?(readme_line_\d+\.py):(\d+):(.*)", line)
        if found and found[1] in offsets:
            block, prelude = offsets[found[1]]
            shown.append(f"README.md:{block.line + int(found[2]) - prelude - 1}:{found[3]}")
        else:
            shown.append(line)
    return "\n".join(shown)


def test_the_dead_letter_fields_are_named_where_the_readme_describes_them() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("- **Dead letters**")
    paragraph = text[start : text.index("\n- **", start + 1)]
    missing = [f.name for f in attrs.fields(DeadLetter) if f"`{f.name}`" not in paragraph]
    assert missing == [], f"README's dead-letter paragraph does not name {missing}"
