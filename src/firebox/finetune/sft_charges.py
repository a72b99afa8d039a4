"""A fine-tuning job's money while it trains: charges into the ledger and its spend hold.

Every checkpoint charges the tokens trained since the last charge, as a
``fine_tuning`` usage record whose id is the job's uid and the trained-token
count it reaches: a runner that died between a checkpoint and its charge
charges it again on the next start (``catch_up``) and the ledger keeps one.
The hold is settled to each charge and the rest of the job held again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio import to_thread

from firebox.clock import Clock
from firebox.errors import FireboxError, PaymentRequired
from firebox.finetune import sft_repository as repo
from firebox.finetune.sft_inputs import TrainableBase, TrainableBases
from firebox.finetune.sft_models import SftJobRow
from firebox.finetune.sft_money import NoRoomYet, TrainingMoney
from firebox.finetune.worker.protocol import read_position
from firebox.limits.spend_guard import Reservation
from firebox.store.database import Database


@dataclass
class RunningJob:
    """A job this runner trains: its worker and what it holds."""

    pk: int
    account_id: str
    uid: str
    output_model: str
    base: TrainableBase
    epochs: int
    lora_rank: int
    target_modules: list[str]
    display_name: str
    billed: int
    estimated_per_epoch: int
    process: asyncio.subprocess.Process
    hold: Reservation | None = None
    stop: str | None = None  # what we asked: cancel, suspended, spend, shutdown
    stop_status: tuple[str, str] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class JobCharges:
    """Charges jobs' training and keeps their holds (one per runner)."""

    def __init__(
        self, db: Database, clock: Clock, money: TrainingMoney, bases: TrainableBases
    ) -> None:
        self._db = db
        self._clock = clock
        self._money = money
        self._bases = bases

    async def _db_call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with self._db.transaction() as session:
                return function(session, *args, **kwargs)

        return await to_thread.run_sync(run)

    def cost(self, account_id: str, output_model: str, base: TrainableBase, tokens: int) -> int:
        """What ``tokens`` training tokens on ``base`` cost now."""
        return self._money.record(
            request_id="estimate",
            account_id=account_id,
            model=output_model,
            base_model=base.name,
            price_class=base.price_class,
            tokens=tokens,
            at=self._clock.now(),
        ).micros

    async def catch_up(self, row: SftJobRow, folder: Path) -> int:
        """Charge what the last checkpoint trained beyond what was billed; the billed count."""
        found = read_position(folder / "checkpoints")
        trained = found[0].trained_tokens if found else 0
        if trained <= row.billed_tokens:
            return row.billed_tokens
        base_class = None
        with contextlib.suppress(FireboxError):
            base_class = self._bases.find(row.account_id, row.base_model, None).price_class
        await self.record(row.pk, row.uid, row.account_id, row.output_model, row.base_model,
                           base_class, row.billed_tokens, trained)  # fmt: skip
        return trained

    async def record(
        self,
        pk: int,
        uid: str,
        account_id: str,
        output_model: str,
        base_model: str,
        price_class: str | None,
        billed: int,
        trained: int,
    ) -> int:
        """Charge ``trained - billed`` tokens (id: the count reached); returns the micros."""
        charge = self._money.record(
            request_id=f"sft:{uid}:{trained}",
            account_id=account_id,
            model=output_model,
            base_model=base_model,
            price_class=price_class,
            tokens=trained - billed,
            at=self._clock.now(),
        )
        await to_thread.run_sync(self._money.charge, charge)
        row: SftJobRow | None = await self._db_call(repo.by_pk, pk)
        spent = (row.billed_micros if row is not None else 0) + charge.micros
        await self._db_call(repo.set_fields, pk, None, billed_tokens=trained, billed_micros=spent)
        return charge.micros

    async def charge(self, job: RunningJob, trained: int, *, hold_rest: bool) -> bool:
        """Charge what ``job`` trained since its last charge, and hold what is left.

        True when the new hold was refused: the job must pause (``job.stop_status`` says why).
        """
        if trained > job.billed:
            micros = await self.record(
                job.pk, job.uid, job.account_id, job.output_model, job.base.name,
                job.base.price_class, job.billed, trained,
            )  # fmt: skip
            job.billed = trained
            await self._money.settle(job.hold, micros)
            job.hold = None
        if not hold_rest:
            await self._money.release(job.hold)
            job.hold = None
            return False
        if job.hold is not None:
            return False
        left = max(job.estimated_per_epoch * job.epochs - trained, 0)
        cost = self.cost(job.account_id, job.output_model, job.base, left)
        try:
            job.hold = await self._money.hold(job.account_id, cost)
        except (NoRoomYet, PaymentRequired) as exc:
            code = getattr(exc, "code", "spend_reserved")
            message = getattr(exc, "message", "Other requests hold the account's spend room.")
            job.stop, job.stop_status = "spend", (code, message)
            return True
        return False
