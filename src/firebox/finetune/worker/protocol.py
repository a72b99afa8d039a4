"""What the runner and a training worker say to each other, one JSON object a line.

The runner starts ``python -m firebox.finetune.worker SPEC.json`` and writes
commands to its stdin (``{"command": "pause"}`` or ``{"command": "cancel"}``);
the worker answers with events on stdout. Closing stdin (the runner's
process died) is a ``pause``: the worker checkpoints and exits, and a later
runner resumes it. This module is shared by both sides and imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

LATEST = "latest.json"  # in the checkpoint folder: which checkpoint is the last

# Every linear layer of a Llama-family block: what LoRA adapts unless told otherwise.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Command = Literal["pause", "cancel"]
EventKind = Literal[
    "started",  # data read: dataset tokens, steps; training begins
    "progress",  # a few steps done
    "checkpoint",  # a checkpoint is on disk; trained_tokens up to it are final
    "completed",  # the adapter is written to the output folder
    "paused",  # stopped at a step on request, checkpoint written
    "cancelled",  # stopped on request, checkpoint written
    "failed",  # gave up; message says why
]


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs: where the data and weights are, and the hyperparameters."""

    job: str  # the job's name, for logs
    base_model_path: str  # Hugging Face folder of the base weights and tokenizer
    train_files: list[str]  # JSONL, one example a line
    output_dir: str  # where the finished adapter goes
    checkpoint_dir: str  # where checkpoints go (and are resumed from)
    base_model_name: str  # written into the adapter config
    format: Literal["CHAT", "COMPLETION"] = "CHAT"
    eval_files: list[str] = field(default_factory=list)
    eval_carveout: bool = False  # hold out a tenth of the examples when no eval file
    epochs: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    lora_rank: int = 8
    lora_alpha: int | None = None  # default 2 x rank
    max_context_length: int = 2048
    batch_size_tokens: int = 4096
    batch_size_samples: int | None = None
    weight_decay: float = 0.01
    warm_start_adapter: str | None = None  # an add-on's folder to continue from
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seed: int = 0
    threads: int = 1
    device: str = "auto"  # "auto": CUDA where present, else the CPU
    progress_every_s: float = 1.0
    nice: int = 10  # added to the worker's niceness: serving keeps the CPU when it needs it

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class Event:
    """One line of a worker's stdout."""

    event: EventKind
    epoch: int = 0  # epochs fully done
    step: int = 0  # optimizer steps done in all
    total_steps: int = 0
    trained_tokens: int = 0  # tokens trained so far in all (every epoch), what is charged
    dataset_tokens: int = 0  # tokens of one pass over the training examples
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    message: str = ""
    path: str = ""

    def line(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, "")})

    @classmethod
    def parse(cls, line: str) -> Event | None:
        """The event on ``line``; None for anything else (a stray log line)."""
        try:
            data: Any = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict) or "event" not in data:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            return None


def command_line(command: Command) -> bytes:
    return (json.dumps({"command": command}) + "\n").encode()


@dataclass
class Position:
    """Where training is: what a checkpoint records."""

    epoch: int = 0  # epochs fully done
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps in all
    trained_tokens: int = 0  # tokens trained in all epochs


def read_position(checkpoint_dir: Path) -> tuple[Position, Path] | None:
    """The latest checkpoint's position and folder, if there is one."""
    latest = checkpoint_dir / LATEST
    if not latest.exists():
        return None
    data = json.loads(latest.read_text())
    folder = checkpoint_dir / str(data.pop("folder"))
    return Position(**data), folder
