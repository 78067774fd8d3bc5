import eventbus


@eventbus.event("djangotests.order_placed")
class OrderPlaced:
    order_id: str


@eventbus.event("djangotests.order_noted")
class OrderNoted:
    """Has after-commit handlers only (tests with TestCase on SQLite)."""

    order_id: str
