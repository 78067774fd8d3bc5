"""Run the shop's scenario: ``python -m examples.shop``.

It starts from a clean slate each time (the shop's tables, its dead letters, its files in
the data folder), places its orders and prints what became of them. The same code runs
with every handler in this process, or with workers in others (``EVENTBUS_TRANSPORT_URL``).
"""

from __future__ import annotations

import logging
import sys

from .reset import remove_files, reset
from .settings import Settings


def main() -> int:
    settings = Settings.from_environment()
    remove_files(settings)
    # The bus logs what handlers gave up on; the summary tells it too, so the log goes to
    # a file in the data folder rather than between the scenario's lines.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=settings.data_dir / "shop.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported only now: importing the app builds the shop, which may log.
    from .app import shop  # noqa: PLC0415
    from .scenario import run  # noqa: PLC0415

    try:
        reset(shop)
        return run(shop)
    finally:
        shop.close()


if __name__ == "__main__":
    sys.exit(main())
