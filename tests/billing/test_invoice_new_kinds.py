"""GPU time, training tokens and batch usage reach the month's invoice, each on its own line.

Issues 16 and 17: usage reports and invoices show GPU-seconds per deployment,
training tokens per fine-tuning job's output model, and batch requests at the
batch price. The records go through the real pricer, ledger and month close.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.billing.ledger import Ledger
from firebox.billing.overrides import NoOverrides
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.billing.service import BillingService
from firebox.clock import FakeClock
from firebox.inference.metering import UsageRecord
from firebox.store.database import Database

JAN = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
BASE = "accounts/firebox/models/firebox-tiny"
DEPLOYMENT = "accounts/acme/deployments/web"
ADDON = "accounts/acme/models/tuned"
CLASS = "TEXT_DENSE_UP_TO_16B"


class _Quiet:
    def money_changed(self, account_id: str) -> None:
        pass


def _records() -> list[UsageRecord]:
    common = {"account_id": "acme", "prompt_tokens": 0, "completion_tokens": 0}
    return [
        # Two replicas' intervals of one 2-GPU deployment: 30 min + 30 min = 1 h x 2 GPUs.
        *(
            UsageRecord(
                request_id=f"gpu:r{i}:0", model=DEPLOYMENT, base_model=BASE, kind="deployment",
                time=JAN + timedelta(minutes=i), deployment=DEPLOYMENT, gpu_type="A100_80GB",
                gpu_milliseconds=2 * 1_800_000, **common,
            )
            for i in range(2)
        ),
        # One epoch of 1M training tokens on a base of up to 16B parameters.
        UsageRecord(
            request_id="sft:job1:epoch1", model=ADDON, base_model=BASE, kind="fine_tuning",
            time=JAN, price_class=CLASS, training_tokens=1_000_000, **common,
        ),
        # A batch line: 1M prompt tokens at half the serverless price.
        UsageRecord(
            request_id="batch-1-0", model=BASE, base_model=BASE, kind="batch", time=JAN,
            price_class=CLASS, account_id="acme", prompt_tokens=1_000_000, completion_tokens=0,
        ),
    ]  # fmt: skip


def test_gpu_training_and_batch_usage_are_invoiced_line_by_line(database: Database) -> None:
    clock = FakeClock(JAN)
    book = PriceBook.load()
    pricer = Pricer(book, NoOverrides(), clock=clock)
    ledger = Ledger(database, clock, _Quiet(), book)
    billing = BillingService(database, clock, pricer, TestPaymentProvider(), _Quiet())
    with database.transaction() as session:
        session.add(AccountRow(id="acme", create_time=JAN, update_time=JAN))
    billing.open_account("acme")
    priced = [pricer.price(r) for r in _records()]
    assert ledger.apply(priced) == 4
    assert ledger.apply(priced) == 0  # idempotent by request id

    clock.advance(timedelta(days=25))  # into February: January can close
    assert "2026-01" in billing.close_due_periods()
    admin = Principal("acme", "u", 1, Role.ADMIN, "key_1", "hash")
    invoices = billing.invoices.list_invoices(admin, "acme", None, None).invoices
    assert len(invoices) == 1
    invoice = billing.invoices.get_invoice(admin, "acme", invoices[0].id)
    lines = {(line.model, line.kind): line for line in invoice.lines}

    gpu = lines[(DEPLOYMENT, "deployment")]
    assert gpu.requests == 2
    assert gpu.gpu_milliseconds == 2 * 3_600_000  # 2 GPU-hours
    assert gpu.amount_micros == 7_780_000  # 2 x $3.89
    training = lines[(ADDON, "fine_tuning")]
    assert training.training_tokens == 1_000_000
    assert training.amount_micros == 500_000
    batch = lines[(BASE, "batch")]
    assert batch.prompt_tokens == 1_000_000
    assert batch.amount_micros == 100_000  # $0.20 per 1M at 50 %
    assert invoice.usage_micros == 8_380_000
