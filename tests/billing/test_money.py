"""Money helpers: exact parsing and formatting, one rounding rule (half-even)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firebox.billing.money import (
    cents_up,
    divide_half_even,
    format_usd,
    parse_usd,
    round_half_even_micros,
)
from firebox.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "micros"),
    [("0", 0), ("1", 1_000_000), ("100.00", 100_000_000), ("0.000123", 123), ("12.5", 12_500_000)],
)
def test_parse_usd(text: str, micros: int) -> None:
    assert parse_usd(text, "amount") == micros


@pytest.mark.parametrize("text", ["", "abc", "1.0000001", "1e3", "-1", "1.", ".5", "0x10"])
def test_parse_usd_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_usd(text, "amount")
    assert caught.value.code == "invalid_amount"
    assert caught.value.param == "amount"


def test_parse_usd_negative_when_allowed() -> None:
    assert parse_usd("-0.50", "amount", allow_negative=True) == -500_000


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.00"),
        (1_000_000, "1.00"),
        (123, "0.000123"),
        (1_500_000, "1.50"),
        (-500_000, "-0.50"),
        (-1, "-0.000001"),
        (50_000_000_000, "50000.00"),
        (100_010, "0.10001"),
    ],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_parse_round_trip(micros: int) -> None:
    assert parse_usd(format_usd(micros), "x", allow_negative=True) == micros


@pytest.mark.parametrize(
    ("amount", "micros"),
    [("0.5", 0), ("1.5", 2), ("2.5", 2), ("3.5", 4), ("0.6", 1), ("2.4999", 2), ("-2.5", -2)],
)
def test_round_half_even(amount: str, micros: int) -> None:
    assert round_half_even_micros(Decimal(amount)) == micros


@given(st.integers(min_value=0, max_value=10**18), st.integers(min_value=1, max_value=10**12))
def test_divide_half_even_matches_decimal(numerator: int, denominator: int) -> None:
    exact = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1), rounding=ROUND_HALF_EVEN
    )
    # Decimal's default precision (28 digits) is exact for these magnitudes.
    assert divide_half_even(numerator, denominator) == int(exact)


@pytest.mark.parametrize(
    ("micros", "cents"), [(0, 0), (1, 1), (10_000, 1), (10_001, 2), (1_000_000, 100)]
)
def test_cents_up(micros: int, cents: int) -> None:
    assert cents_up(micros) == cents
