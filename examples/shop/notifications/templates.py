"""Mail templates: text files in the data folder, ``Subject:`` on the first line.

The shop ships them in ``notifications/templates/``; ``install`` copies them into the data
folder, where operators may edit them. A template missing there is an operator's fix, not
something a retry cures.
"""

from __future__ import annotations

import shutil
import string
from collections.abc import Collection
from pathlib import Path

import attrs

__all__ = ["SHIPPED", "TemplateMissingError", "Templates", "install"]

SHIPPED = Path(__file__).with_name("templates")
"""The templates that come with the shop."""


class TemplateMissingError(LookupError):
    """No template file of that name in the templates folder."""


@attrs.frozen
class Rendered:
    subject: str
    body: str


class Templates:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def render(self, name: str, **values: str) -> Rendered:
        path = self.directory / f"{name}.txt"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateMissingError(
                f"mail template {name!r} is missing: put {name}.txt in {self.directory} "
                f"(the shop ships one in {SHIPPED}), then replay the dead letters"
            ) from None
        first, _, body = string.Template(text).substitute(values).partition("\n")
        return Rendered(subject=first.removeprefix("Subject:").strip(), body=body.strip())


def install(
    directory: Path, *, only: Collection[str] | None = None, leave_out: Collection[str] = ()
) -> list[str]:
    """Copy the shipped templates (``only`` those named, if given; not those in
    ``leave_out``) into ``directory``; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    installed = []
    for path in sorted(SHIPPED.glob("*.txt")):
        if (only is None or path.stem in only) and path.stem not in leave_out:
            shutil.copyfile(path, directory / path.name)
            installed.append(path.stem)
    return installed
