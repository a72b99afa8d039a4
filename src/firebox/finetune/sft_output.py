"""A finished job's adapter becomes a LoRA add-on model of the account, served at once.

The add-on (``HF_PEFT_ADDON`` with ``peftDetails``) points at the adapter
folder the worker wrote, and is loaded for serving in the account (a
``deployedModels`` entry), so the serverless engine answers with it right
away, at its base model's price (SPEC §2). Publishing twice (a runner that
died between the two steps) finds both done and changes nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from anyio import to_thread

from firebox.accounts.bootstrap import OPERATOR_USER, PLATFORM_ACCOUNT
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.catalog.deployed_schemas import DeployedModelSpec
from firebox.catalog.deployed_service import AdapterHooks
from firebox.catalog.kinds import ModelKind, split_name
from firebox.catalog.schemas import ModelCreate, ModelSpec, PeftDetailsSpec
from firebox.catalog.service import CatalogService
from firebox.errors import AlreadyExists

# The runner acts for the platform (it writes an operator-only field, adapterPath).
SYSTEM = Principal(
    account_id=PLATFORM_ACCOUNT,
    user_id=OPERATOR_USER,
    user_pk=0,
    role=Role.ADMIN,
    key_id="sft-runner",
    key_hash="",
    is_operator=True,
)


class OutputPublisher:
    """Creates and loads the add-on a job produced."""

    def __init__(self, catalog: CatalogService, hooks: AdapterHooks) -> None:
        self._catalog = catalog
        self._hooks = hooks

    async def publish(
        self,
        output_model: str,
        adapter_dir: Path,
        base_model: str,
        rank: int,
        target_modules: list[str],
        display_name: str,
    ) -> None:
        parts = split_name(output_model)
        assert parts is not None
        account_id, model_id = parts
        body = ModelCreate(
            model=ModelSpec(
                kind=ModelKind.LORA_ADDON,
                display_name=display_name[:63] or model_id,
                description=f"LoRA add-on of {base_model}, trained by a fine-tuning job.",
                peft_details=PeftDetailsSpec(
                    base_model=base_model, r=rank, target_modules=target_modules
                ),
                adapter_path=str(adapter_dir),
            )
        )
        try:
            await to_thread.run_sync(self._catalog.create, SYSTEM, account_id, model_id, body)
        except AlreadyExists:
            existing = await to_thread.run_sync(self._catalog.get, SYSTEM, account_id, model_id)
            if existing.adapter_path != str(adapter_dir):
                raise
        with contextlib.suppress(AlreadyExists):  # loaded by an earlier try
            await self._catalog.deployed_models.load(
                SYSTEM, account_id, DeployedModelSpec(model=output_model), self._hooks
            )
