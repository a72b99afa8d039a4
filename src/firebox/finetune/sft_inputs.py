"""What a fine-tuning job reads: its dataset files and its base model's weights.

``DatasetSource`` is the datasets slice's read API as jobs use it (a READY
dataset's local file, format and counts); ``TrainableBases`` finds a base
model's (or a warm-start add-on's) local folders through the catalog. Both are
small protocols, so the runner and its tests need neither the datasets'
storage nor the inference engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from firebox.catalog.binding import LocalEngine
from firebox.catalog.index import ResolvedModel
from firebox.catalog.kinds import ModelKind
from firebox.errors import InvalidArgument
from firebox.finetune.dataset_service import DatasetService


@dataclass(frozen=True)
class TrainingData:
    """A READY dataset as a job reads it."""

    name: str  # accounts/{a}/datasets/{id}
    paths: list[Path]  # local JSONL files, in order
    format: str  # CHAT | COMPLETION
    example_count: int
    token_count: int  # counted with the base tokenizer, as the trainer counts


class DatasetSource(Protocol):
    def training_data(self, account_id: str, dataset: str) -> TrainingData:
        """The READY dataset ``dataset`` (a full name or an id) of ``account_id``.

        Raises ``NotFound`` (unknown) or ``FailedPrecondition`` (not READY, saying why).
        """
        ...


class DatasetReader:
    """``DatasetSource`` over the datasets slice (``DatasetService``)."""

    def __init__(self, datasets: DatasetService) -> None:
        self._datasets = datasets

    def training_data(self, account_id: str, dataset: str) -> TrainingData:
        files = self._datasets.ready_dataset(account_id, dataset)
        return TrainingData(
            name=files.name,
            paths=self._datasets.local_paths(files),
            format=files.format.value,
            example_count=files.example_count,
            token_count=files.estimated_token_count,
        )


class ModelLookup(Protocol):
    def resolve(self, principal_account_id: str, name: str) -> ResolvedModel: ...


@dataclass(frozen=True)
class TrainableBase:
    """A base model a job can train on, and the add-on it starts from, if any."""

    name: str
    path: Path  # Hugging Face folder: config, safetensors, tokenizer
    price_class: str | None
    context_length: int
    warm_start_path: Path | None = None
    target_modules: tuple[str, ...] | None = None
    warm_start_rank: int | None = None


class TrainableBases:
    """Finds trainable bases in the catalog: text base models bound to local weights."""

    def __init__(self, catalog: ModelLookup, models_dir: Path) -> None:
        self._catalog = catalog
        self._models_dir = models_dir

    def find(
        self, account_id: str, base_model: str | None, warm_start: str | None
    ) -> TrainableBase:
        warm = None
        if warm_start:
            warm = self._catalog.resolve(account_id, warm_start)
            if warm.kind is not ModelKind.LORA_ADDON or warm.adapter is None:
                raise InvalidArgument(
                    f"warmStartFrom {warm_start!r} is not a LoRA add-on (HF_PEFT_ADDON).",
                    code="invalid_warm_start",
                    param="warmStartFrom",
                )
            if not warm.adapter.path or warm.base_model is None:
                raise InvalidArgument(
                    f"Add-on {warm.name!r} has no adapter files on this server to start from.",
                    code="invalid_warm_start",
                    param="warmStartFrom",
                )
            base_model = warm.base_model
        assert base_model is not None
        base = self._catalog.resolve(account_id, base_model)
        param = "warmStartFrom" if warm is not None else "baseModel"
        if base.kind is not ModelKind.TEXT_BASE:
            raise InvalidArgument(
                f"{base.name!r} is a {base.kind.value}; fine-tuning needs a text base model "
                "(HF_BASE_MODEL).",
                code="invalid_base_model",
                param=param,
            )
        if not isinstance(base.engine, LocalEngine) or not base.engine.path:
            raise InvalidArgument(
                f"{base.name!r} has no local weights on this server, so it cannot be "
                "fine-tuned here; pick a base model served by the in-process engine.",
                code="base_model_not_trainable",
                param=param,
            )
        adapter = warm.adapter if warm is not None else None
        return TrainableBase(
            name=base.name,
            path=self._local(base.engine.path),
            price_class=base.price_class.value if base.price_class is not None else None,
            context_length=base.context_length or 2048,
            warm_start_path=self._local(adapter.path) if adapter and adapter.path else None,
            target_modules=adapter.target_modules if adapter else None,
            warm_start_rank=adapter.rank if adapter else None,
        )

    def _local(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self._models_dir / candidate
