"""Run the shop's scenario: ``python -m examples.shop``.

It starts from a clean slate each time (the data folder, and on a database server the
shop's tables), places its orders and prints what became of them.
"""

from __future__ import annotations

import logging
import sys

from .reset import reset
from .settings import Settings


def main() -> int:
    settings = Settings.from_environment()
    reset(settings)
    # The bus logs what handlers gave up on; the summary tells it too, so the log goes to
    # a file in the data folder rather than between the scenario's lines.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=settings.data_dir / "shop.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported only now: importing the app opens the database the reset just cleared.
    from .app import shop  # noqa: PLC0415
    from .scenario import run  # noqa: PLC0415

    try:
        return run(shop)
    finally:
        shop.bus.close()
        shop.db.close()


if __name__ == "__main__":
    sys.exit(main())
