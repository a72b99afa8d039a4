"""Money as integer micro-USD, and the one rounding rule of billing.

Every amount Firebox stores is an integer number of micro-dollars
(``*_micros``); floats never touch money. USD crosses the wire as a decimal
string ("100.00", "0.000123").

Rounding rule: each usage record is priced exactly (integer or Decimal
arithmetic, no intermediate rounding) and rounded once, to the micro-dollar,
half-even ("banker's rounding": 2.5 -> 2, 3.5 -> 4). Sums over records (period
usage, invoice lines, invoices) add already-rounded amounts, so an invoice is
exactly the sum of its records. Card charges are whole cents, rounded up
(``cents_up``), so a charge never falls short of what it pays for.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

from firebox.errors import InvalidArgument
from firebox.money_state import MICROS_PER_USD, format_usd  # one of each, shared with limits

__all__ = [
    "MICROS_PER_CENT",
    "MICROS_PER_USD",
    "cents_up",
    "divide_half_even",
    "format_usd",
    "parse_usd",
    "round_half_even_micros",
]

MICROS_PER_CENT = 10_000
_MAX_WHOLE_DIGITS = 12  # 10**12 USD is 10**18 micro-USD, inside a signed 64-bit column
_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def parse_usd(text: str, param: str, *, allow_negative: bool = False) -> int:
    """Micro-USD of a decimal USD string such as ``"100.00"``; exact, never via a float."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text.strip()):
        raise InvalidArgument(
            f'Invalid amount {text!r}: give US dollars as a decimal string, such as "100.00".',
            code="invalid_amount",
            param=param,
        )
    # Integer arithmetic, not Decimal: its context keeps 28 digits, which
    # would round a longer amount (and echo the rounded one back).
    whole, _, fraction = text.strip().partition(".")
    negative = whole.startswith("-")
    if len(whole.lstrip("-").lstrip("0")) > _MAX_WHOLE_DIGITS:
        raise InvalidArgument(
            f"Invalid amount {text!r}: at most {_MAX_WHOLE_DIGITS} digits before the point "
            "(amounts are stored as 64-bit micro-dollars).",
            code="invalid_amount",
            param=param,
        )
    if len(fraction.rstrip("0")) > 6:
        raise InvalidArgument(
            f"Invalid amount {text!r}: at most 6 decimal places (one micro-dollar).",
            code="invalid_amount",
            param=param,
        )
    magnitude = int(whole.lstrip("-")) * MICROS_PER_USD + int(fraction[:6].ljust(6, "0"))
    micros = -magnitude if negative else magnitude
    if micros < 0 and not allow_negative:
        raise InvalidArgument(
            f"Invalid amount {text!r}: the amount must not be negative.",
            code="invalid_amount",
            param=param,
        )
    return micros


def round_half_even_micros(amount: Decimal) -> int:
    """``amount`` (in micro-USD, possibly fractional) rounded half-even to an integer."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def divide_half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half-even, in exact integer arithmetic."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def cents_up(micros: int) -> int:
    """Whole cents that cover ``micros`` (rounded up; a charge never falls short)."""
    return -(-micros // MICROS_PER_CENT)
