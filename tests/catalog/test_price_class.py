"""Price classes of SPEC §2 at their exact boundaries, and the explicit-price rule."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.catalog.price_class import format_price, parse_price
from firebox.errors import InvalidArgument
from tests.catalog.conftest import embedding, error_of, post_model, text_base
from tests.support.api import ok

# (body, price class or None when it fits no bucket); bounds written out from SPEC §2.
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("dense 16B", text_base(16e9), "TEXT_DENSE_UP_TO_16B"),
    ("dense 16.1B", text_base(16.1e9), "TEXT_DENSE_16B_TO_80B"),
    ("dense 80B", text_base(80e9), "TEXT_DENSE_16B_TO_80B"),
    ("dense 80.1B", text_base(80.1e9), None),
    ("dense 405B", text_base(405e9), None),
    ("moe 56B", text_base(56e9, moe=True), "TEXT_MOE_UP_TO_56B"),
    ("moe 56.1B", text_base(56.1e9, moe=True), "TEXT_MOE_56B_TO_176B"),
    ("moe 176B", text_base(176e9, moe=True), "TEXT_MOE_56B_TO_176B"),
    ("moe 176.1B", text_base(176.1e9, moe=True), None),
    ("embedding 150M", embedding(150e6), "EMBEDDING_UP_TO_150M"),
    ("embedding 150.1M", embedding(150.1e6), "EMBEDDING_150M_TO_350M"),
    ("embedding 350M", embedding(350e6), "EMBEDDING_150M_TO_350M"),
    ("embedding 351M", embedding(351e6), None),
    ("embedding 1B", embedding(1e9), None),
    # Bound to an engine, so it could be served; without an engine it would wait for
    # uploaded weights (UPLOADING), whose headers give the size (test_model_uploads.py).
    (
        "text without a size",
        {"kind": "HF_BASE_MODEL", "engine": {"type": "local", "path": "x"}},
        None,
    ),
]


@pytest.mark.parametrize(("body", "price_class"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_price_class_boundaries(
    client: TestClient,
    operator_headers: dict[str, str],
    body: dict[str, Any],
    price_class: str | None,
) -> None:
    plain = post_model(client, operator_headers, "firebox", "sized", body)
    if price_class is not None:
        made = ok(plain)
        assert (made["priceClass"], made["price"]) == (price_class, None)
        return
    # Outside every bucket: refused without an explicit price, accepted with one.
    error = error_of(plain, 400)
    assert (error["code"], error["param"]) == ("price_required", "price")
    assert "fits no price class" in error["message"]
    assert "accounts/firebox/models/sized" in error["message"]
    made = ok(post_model(client, operator_headers, "firebox", "sized", {**body, "price": "3.00"}))
    assert (made["priceClass"], made["price"]) == (None, "3.00")


def test_explicit_price_overrides_a_class(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    made = ok(post_model(client, operator_headers, "firebox", "m", text_base(price="0.15")))
    assert (made["priceClass"], made["price"]) == ("TEXT_DENSE_UP_TO_16B", "0.15")


@pytest.mark.parametrize(
    "price", ["-1", "0.1234567", "abc", "", "1e3", "0x10", " ", "1.", ".5", "1,5", "2000000"]
)
def test_bad_price_strings_are_refused(
    client: TestClient, operator_headers: dict[str, str], price: str
) -> None:
    refused = post_model(client, operator_headers, "firebox", "m", text_base(405e9, price=price))
    error = error_of(refused, 400)
    assert error["param"] in ("price", "model.price")
    assert error["code"] in ("invalid_price", "price_required")


def test_a_price_must_be_a_string(client: TestClient, operator_headers: dict[str, str]) -> None:
    refused = post_model(client, operator_headers, "firebox", "m", text_base(405e9, price=0.9))
    assert error_of(refused, 400)["param"] == "model.price"


@pytest.mark.parametrize(
    ("text", "micros", "shown"),
    [
        ("0.20", 200_000, "0.20"),
        ("0.2", 200_000, "0.20"),
        ("3", 3_000_000, "3.00"),
        ("0.00013", 130, "0.00013"),
        ("0.000001", 1, "0.000001"),
        ("0.1000000", 100_000, "0.10"),  # trailing zeros are not extra precision
        ("0", 0, "0.00"),
        ("1000000", 1_000_000_000_000, "1000000.00"),
    ],
)
def test_prices_are_exact_micro_dollars(text: str, micros: int, shown: str) -> None:
    assert parse_price(text) == micros
    assert format_price(micros) == shown


def test_parse_price_names_the_problem() -> None:
    with pytest.raises(InvalidArgument, match="6 decimal places"):
        parse_price("0.0000001")
    with pytest.raises(InvalidArgument, match="non-negative decimal"):
        parse_price("-0.5")
