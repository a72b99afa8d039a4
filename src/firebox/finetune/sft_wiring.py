"""Builds the fine-tuning jobs of one process: the service, its runner and their money."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from firebox.errors import NotFound
from firebox.finetune.sft_inputs import DatasetReader, TrainableBases
from firebox.finetune.sft_money import TrainingMoney
from firebox.finetune.sft_output import OutputPublisher
from firebox.finetune.sft_runner import RunnerSettings, SftRunner
from firebox.finetune.sft_service import SftJobService

if TYPE_CHECKING:
    from firebox.services import Services


@dataclass
class SftServices:
    jobs: SftJobService
    runner: SftRunner
    money: TrainingMoney


def build_sft(services: Services) -> SftServices:
    settings = services.settings
    enforced = settings.enforcement
    money = TrainingMoney(
        services.money.pricer,
        services.usage,
        services.money.spend_guard if enforced else None,
        services.money.suspension if enforced else None,
    )
    bases = TrainableBases(services.catalog, settings.models_dir)
    datasets = DatasetReader(services.datasets)
    runner = SftRunner(
        services.db,
        services.clock,
        datasets,
        bases,
        money,
        OutputPublisher(services.catalog, services.engines),
        RunnerSettings(
            work_dir=settings.data_dir / "finetune",
            max_jobs=settings.finetune_max_jobs,
            lease_s=settings.finetune_lease_s,
            poll_s=settings.finetune_poll_s,
            threads=settings.finetune_threads,
            device=settings.finetune_device,
            nice=settings.finetune_nice,
        ),
    )
    catalog = services.catalog

    def model_exists(account_id: str, name: str) -> bool:
        try:
            catalog.resolve(account_id, name)
        except NotFound:
            return False
        return True

    jobs = SftJobService(services.db, services.clock, datasets, bases, money, model_exists)
    jobs.on_change = runner.wake
    services.money.hooks.register(runner.suspension_changed)
    return SftServices(jobs=jobs, runner=runner, money=money)
