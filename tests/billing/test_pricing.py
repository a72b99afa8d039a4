"""Pricing: SPEC §2 amounts, exactly, for every kind of usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firebox.billing.models import PriceOverrideRow
from firebox.billing.overrides import DbOverrides, NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer, period_of
from firebox.clock import FakeClock
from firebox.errors import FailedPrecondition
from firebox.inference.admission import Demand
from firebox.store.database import Database
from tests.billing.conftest import T0, MakeAccount, usage

BOOK = PriceBook.load()


class FixedOverrides:
    """Overrides from a dict keyed by target; a fixed deployment discount."""

    def __init__(self, prices: dict[str, int] | None = None, discount_bps: int = 0) -> None:
        self.prices = prices or {}
        self.discount_bps = discount_bps

    def unit_price(
        self, account_id: str, model: str | None, price_class: str | None, at: datetime
    ) -> int | None:
        for target in (model, price_class):
            if target is not None and target in self.prices:
                return self.prices[target]
        return None

    def deployment_discount_bps(self, account_id: str) -> int:
        return self.discount_bps


def amount(pricer: Pricer | None = None, **fields: Any) -> int:
    return (pricer or Pricer(BOOK, NoOverrides())).price(usage(**fields)).amount_micros


@pytest.mark.parametrize(
    ("fields", "micros"),
    [
        ({"completion_tokens": 5}, 1),  # 5 x 0.20 = 1.0
        ({"prompt_tokens": 3}, 1),  # 0.6 -> 1
        ({"prompt_tokens": 2}, 0),  # 0.4 -> 0
        ({"prompt_tokens": 25, "cached_prompt_tokens": 25}, 2),  # 2.5 -> 2 (even)
        ({"prompt_tokens": 35, "cached_prompt_tokens": 35}, 4),  # 3.5 -> 4 (even)
        ({"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}, 400_000),
        ({"prompt_tokens": 1_000_000, "cached_prompt_tokens": 400_000}, 160_000),
        ({"kind": "completion", "prompt_tokens": 10, "completion_tokens": 10}, 4),
    ],
)
def test_text_amounts(fields: dict[str, Any], micros: int) -> None:
    assert amount(**fields) == micros


@pytest.mark.parametrize(
    ("price_class", "micros"),
    [
        ("TEXT_DENSE_UP_TO_16B", 200_000),
        ("TEXT_DENSE_16B_TO_80B", 900_000),
        ("TEXT_MOE_UP_TO_56B", 500_000),
        ("TEXT_MOE_56B_TO_176B", 1_200_000),
    ],
)
def test_text_classes_per_million(price_class: str, micros: int) -> None:
    assert amount(price_class=price_class, completion_tokens=1_000_000) == micros


def test_text_priced_record_carries_units_version_and_period() -> None:
    priced = Pricer(BOOK, NoOverrides()).price(
        usage(price_class="TEXT_DENSE_16B_TO_80B", prompt_tokens=10, cached_prompt_tokens=4)
    )
    assert (priced.unit_price_micros, priced.cached_unit_price_micros) == (900_000, 450_000)
    assert (priced.price_version, priced.period) == ("2024-01", "2026-01")
    assert priced.amount_micros == 7  # 6 x 0.90 + 4 x 0.45 = 7.2


def test_images_count_576_prompt_tokens() -> None:
    # (10 + 2 x 576) x 0.90 = 1045.8 -> 1046
    assert amount(price_class="TEXT_DENSE_16B_TO_80B", prompt_tokens=10, images=2) == 1046


def test_cached_tokens_never_exceed_prompt() -> None:
    assert amount(prompt_tokens=10, cached_prompt_tokens=50) == 1  # 10 x 0.10 = 1.0


def test_embedding() -> None:
    assert amount(kind="embedding", price_class="EMBEDDING_UP_TO_150M", prompt_tokens=1000) == 8
    embed = {"kind": "embedding", "price_class": "EMBEDDING_150M_TO_350M"}
    assert amount(**embed, prompt_tokens=1_000_000) == 16_000
    assert amount(**embed, prompt_tokens=1_000_000, completion_tokens=99) == 16_000


def test_image_per_step() -> None:
    assert amount(kind="image", price_class="IMAGE_SDXL", steps=30) == 3_900
    assert amount(kind="image", price_class="IMAGE_SDXL_CONTROLNET", steps=30) == 6_000


def test_deployment_per_gpu_time_with_discount_only_there() -> None:
    deploy = {"kind": "deployment", "gpu_type": "A100_80GB", "price_class": None}
    assert amount(**deploy, gpu_milliseconds=3_600_000) == 3_890_000
    assert amount(**deploy, gpu_milliseconds=2 * 90_000) == 194_500  # 2 GPUs x 90 s
    assert amount(**deploy, gpu_milliseconds=1) == 1  # 1.0805 -> 1
    discounted = Pricer(BOOK, FixedOverrides(discount_bps=1_000))
    assert amount(discounted, **deploy, gpu_milliseconds=180_000) == 175_050
    assert amount(discounted, completion_tokens=1_000_000) == 200_000  # never serverless


def test_h100_needs_an_operator_price() -> None:
    record = {"kind": "deployment", "gpu_type": "H100_80GB", "gpu_milliseconds": 3_600_000}
    with pytest.raises(FailedPrecondition) as caught:
        amount(**record)
    assert caught.value.code == "gpu_type_not_priced"
    assert amount(Pricer(BOOK, FixedOverrides({"H100_80GB": 5_000_000})), **record) == 5_000_000


def test_requests_to_deployments_cost_nothing_per_token() -> None:
    assert amount(completion_tokens=1_000_000, deployment="accounts/acme/deployments/d1") == 0


@pytest.mark.parametrize(
    ("price_class", "micros"),
    [
        ("TEXT_DENSE_UP_TO_16B", 500_000),
        ("TEXT_DENSE_16B_TO_80B", 3_000_000),
        ("TEXT_MOE_UP_TO_56B", 2_000_000),
    ],
)
def test_fine_tuning(price_class: str, micros: int) -> None:
    tune = {"kind": "fine_tuning", "price_class": price_class}
    assert amount(**tune, training_tokens=1_000_000) == micros


def test_fine_tuning_of_an_unpriced_class_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        amount(kind="fine_tuning", price_class="TEXT_MOE_56B_TO_176B", training_tokens=5)
    assert caught.value.code == "model_not_priced"


def test_model_without_class_or_price_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        amount(price_class=None, prompt_tokens=5)
    assert caught.value.code == "model_not_priced"
    assert "small" in caught.value.message


def test_explicit_price_wins_over_class_and_override_over_both() -> None:
    assert amount(price_class=None, explicit_price_micros=3_000_000, prompt_tokens=1) == 3
    assert amount(explicit_price_micros=3_000_000, prompt_tokens=1_000_000) == 3_000_000
    pricer = Pricer(BOOK, FixedOverrides({"TEXT_DENSE_UP_TO_16B": 100_000}))
    assert amount(pricer, explicit_price_micros=3_000_000, prompt_tokens=1_000_000) == 100_000
    by_model = Pricer(BOOK, FixedOverrides({"accounts/fireworks/models/small": 50_000}))
    assert amount(by_model, prompt_tokens=1_000_000) == 50_000


def test_a_later_price_version_does_not_reprice_earlier_usage() -> None:
    data: dict[str, Any] = {
        "versions": [
            {"id": "v1", "effective_from": "2024-01-01T00:00:00Z", "classes": {"X": "0.20"}},
            {"id": "v2", "effective_from": "2026-02-01T00:00:00Z", "classes": {"X": "0.30"}},
        ],
        "tiers": [{"tier": 1, "spend_limit": "50", "qualifies_at": "0"}],
    }
    pricer = Pricer(PriceBook.from_dict(data), NoOverrides())
    feb = datetime(2026, 2, 1, tzinfo=UTC)
    before = pricer.price(usage(price_class="X", prompt_tokens=10, time=feb - timedelta(seconds=1)))
    after = pricer.price(usage(price_class="X", prompt_tokens=10, time=feb))
    assert (before.price_version, before.amount_micros) == ("v1", 2)
    assert (after.price_version, after.amount_micros) == ("v2", 3)
    assert pricer.book.version_at(datetime(2020, 1, 1, tzinfo=UTC)).id == "v1"


def test_period_is_the_utc_month() -> None:
    local = datetime(2026, 1, 31, 23, 30, tzinfo=UTC) + timedelta(hours=1)
    assert period_of(local) == "2026-02"
    assert Pricer(BOOK, NoOverrides()).price(usage(time=local)).period == "2026-02"


def test_tiers() -> None:
    assert [BOOK.tier_for(m) for m in (0, 99_999_999, 100_000_000, 10_000_000_000)] == [1, 1, 2, 4]
    assert [BOOK.tier_limit_micros(t) for t in (1, 2, 3, 4)] == [
        50_000_000,
        500_000_000,
        5_000_000_000,
        50_000_000_000,
    ]


def demand(**fields: Any) -> Demand:
    values: dict[str, Any] = {
        "request_id": "r",
        "account_id": "acme",
        "kind": "chat",
        "model": "accounts/fireworks/models/small",
        "billing_model": "accounts/fireworks/models/small",
        "price_class": "TEXT_DENSE_UP_TO_16B",
        "explicit_price_micros": None,
        "prompt_tokens": 100,
        "completion_tokens": 1000,
    }
    values.update(fields)
    return Demand(**values)


def test_worst_case_cost() -> None:
    pricer = Pricer(BOOK, NoOverrides(), clock=FakeClock(T0))
    assert pricer.worst_case_cost(demand()) == 220  # 1100 x 0.20
    assert pricer.worst_case_cost(demand(images=1)) == 336  # 1676 x 0.20 = 335.2, up
    assert pricer.worst_case_cost(demand(kind="embedding", price_class="EMBEDDING_UP_TO_150M")) == 1
    assert pricer.worst_case_cost(demand(deployment="accounts/acme/deployments/d")) == 0
    with pytest.raises(FailedPrecondition):
        pricer.worst_case_cost(demand(price_class=None))


def test_db_overrides(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("acme", deployment_discount_bps=2_500)
    make_account("other")
    clock = FakeClock(T0)
    overrides = DbOverrides(billing_db, clock)
    pricer = Pricer(BOOK, overrides)
    assert amount(pricer, prompt_tokens=1_000_000) == 200_000

    def add(target: str, micros: int, start: datetime) -> None:
        with billing_db.transaction() as session:
            session.add(
                PriceOverrideRow(
                    account_id="acme",
                    target=target,
                    unit_price_micros=micros,
                    effective_from=start,
                    create_time=T0,
                )
            )

    add("TEXT_DENSE_UP_TO_16B", 150_000, T0 - timedelta(days=30))
    add("TEXT_DENSE_UP_TO_16B", 120_000, T0 + timedelta(days=1))
    add("accounts/fireworks/models/small", 100_000, T0 + timedelta(days=2))
    assert amount(pricer, prompt_tokens=1_000_000) == 200_000  # cached until refresh
    overrides.refresh()
    assert amount(pricer, prompt_tokens=1_000_000) == 150_000
    assert amount(pricer, prompt_tokens=1_000_000, time=T0 + timedelta(days=1)) == 120_000
    assert amount(pricer, prompt_tokens=1_000_000, time=T0 + timedelta(days=3)) == 100_000
    assert amount(pricer, prompt_tokens=1_000_000, account_id="other") == 200_000
    deploy = {"kind": "deployment", "gpu_type": "A100_80GB", "gpu_milliseconds": 3_600_000}
    assert amount(pricer, **deploy) == 2_917_500
    assert amount(pricer, **deploy, account_id="other") == 3_890_000
