"""Batch usage: the price book's batch share of the serving price, in records and worst cases."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import DEFAULT_PATH, PriceBook
from firebox.billing.pricing import Pricer
from firebox.errors import InvalidArgument
from firebox.inference.admission import Demand
from tests.billing.conftest import usage
from tests.billing.test_pricing import FixedOverrides


def _book(percent: int | None) -> PriceBook:
    data = tomllib.loads(DEFAULT_PATH.read_text())
    for version in data["versions"]:
        version.pop("batch_price_percent", None)
        if percent is not None:
            version["batch_price_percent"] = percent
    return PriceBook.from_dict(data)


def test_batch_pays_the_books_share_of_the_serving_price_cached_tokens_included() -> None:
    pricer = Pricer(PriceBook.load(), NoOverrides())
    chat = usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_prompt_tokens=400_000)
    batch = replace(chat, kind="batch", request_id="b1")
    chat_price, batch_price = pricer.price(chat), pricer.price(batch)
    # $0.20 per 1M (TEXT_DENSE_UP_TO_16B): 1.6M full tokens + 0.4M cached at 50% = $0.36.
    assert chat_price.amount_micros == 360_000
    assert batch_price.amount_micros == 180_000  # SPEC §2: 50%
    assert (batch_price.unit_price_micros, batch_price.cached_unit_price_micros) == (
        100_000,
        50_000,
    )


def test_the_operator_changes_the_share_in_the_price_book_and_overrides_are_halved_too() -> None:
    assert _book(None).versions[0].batch_price_percent == 50  # the default when absent
    record = usage(kind="batch", prompt_tokens=3, completion_tokens=4)
    assert (
        Pricer(_book(25), NoOverrides())
        .price(replace(record, prompt_tokens=1_000_000, completion_tokens=0))
        .amount_micros
        == 50_000
    )
    exact = Pricer(_book(50), NoOverrides()).price(record).amount_micros
    assert exact == 1  # 7 tokens x $0.10/1M = 0.7 micro-USD, rounded half-even once
    custom = Pricer(PriceBook.load(), FixedOverrides({"TEXT_DENSE_UP_TO_16B": 1_000_000}))
    big = replace(record, prompt_tokens=1_000_000, completion_tokens=0)
    assert custom.price(big).amount_micros == 500_000
    with pytest.raises(InvalidArgument):
        _book(101)


def test_a_batch_demand_reserves_the_batch_price_and_deployments_cost_nothing() -> None:
    pricer = Pricer(PriceBook.load(), NoOverrides())
    demand = Demand(
        request_id="r",
        account_id="acme",
        kind="batch",
        model="m",
        billing_model="m",
        price_class="TEXT_DENSE_UP_TO_16B",
        explicit_price_micros=None,
        prompt_tokens=1_000_000,
        completion_tokens=1_000_001,
        choices=1,
    )
    assert pricer.worst_case_cost(demand) == 200_001  # rounded up, never short
    assert pricer.worst_case_cost(replace(demand, kind="chat")) == 400_001
    on_deployment = usage(kind="batch", prompt_tokens=5, deployment="accounts/acme/deployments/d")
    assert pricer.price(on_deployment).amount_micros == 0
