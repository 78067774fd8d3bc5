"""A stand-in for a card payment provider, with its test cards.

Like real providers' test modes, the card decides the outcome: ``card-0002`` is declined,
every other card is approved. A real provider takes an idempotency key with each charge
(here the order id), so a charge sent twice is taken once.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

__all__ = ["CardGateway", "Charge"]

DECLINED_CARDS = {"card-0002": "insufficient funds"}


@attrs.frozen
class Charge:
    approved: bool
    reference: str = ""
    decline_reason: str = ""


class CardGateway:
    def charge(self, *, card: str, amount: Decimal, idempotency_key: str) -> Charge:
        if amount <= 0:
            return Charge(approved=False, decline_reason=f"invalid amount {amount}")
        reason = DECLINED_CARDS.get(card)
        if reason is not None:
            return Charge(approved=False, decline_reason=reason)
        return Charge(approved=True, reference=f"ch_{idempotency_key}")
