"""LoRA supervised fine-tuning with ``peft`` on a base model's local weights.

A plain torch loop (as fast as the ``transformers`` Trainer here, see
bench/finetune.py, and small enough to checkpoint exactly): AdamW on the
adapter's parameters, linear warm-up then cosine decay to a tenth, gradient
clipping at 1.0, the loss on assistant tokens only (``examples``). Each
epoch's order is a seeded shuffle, so a run resumed from a checkpoint taken
mid-epoch sees the same batches it would have seen. A checkpoint (adapter,
optimizer, schedule, position) is written at the end of every epoch and
whenever the runner asks the worker to stop.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from firebox.finetune.worker.examples import IGNORE, Example, load_examples
from firebox.finetune.worker.protocol import LATEST, Event, Position, TrainSpec, read_position


def batches_of(examples: list[Example], order: list[int], spec: TrainSpec) -> list[list[int]]:
    """``order`` cut into batches: at most ``batch_size_tokens`` padded tokens (or samples)."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = len(examples[index].ids)
        grown = max(longest, length) * (len(current) + 1)
        full = spec.batch_size_samples is not None and len(current) >= spec.batch_size_samples
        if current and (full or grown > spec.batch_size_tokens):
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def epoch_batches(examples: list[Example], spec: TrainSpec, epoch: int) -> list[list[int]]:
    order = list(range(len(examples)))
    random.Random(spec.seed * 1_000_003 + epoch).shuffle(order)
    return batches_of(examples, order, spec)


def collate(examples: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    longest = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Trainer:
    """Trains one job's adapter; ``run`` returns the last event (completed, paused, ...)."""

    def __init__(
        self,
        spec: TrainSpec,
        emit: Callable[[Event], None],
        stop_requested: Callable[[], str | None],
    ) -> None:
        self.spec = spec
        self._emit = emit
        self._stop_requested = stop_requested
        torch.set_num_threads(max(1, spec.threads))
        torch.manual_seed(spec.seed)
        if spec.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(spec.device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(spec.base_model_path)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.checkpoints = Path(spec.checkpoint_dir)

    # -- data ------------------------------------------------------------------

    def _load_data(self) -> tuple[list[Example], list[Example]]:
        spec = self.spec
        train = self._examples(spec.train_files)
        evaluation: list[Example] = []
        if spec.eval_files:
            evaluation = self._examples(spec.eval_files)
        elif spec.eval_carveout and len(train) >= 10:
            held = max(1, len(train) // 10)
            train, evaluation = train[:-held], train[-held:]
        return train, evaluation

    def _examples(self, files: list[str]) -> list[Example]:
        spec = self.spec
        found: list[Example] = []
        for name in files:
            found.extend(
                load_examples(self.tokenizer, Path(name), spec.format, spec.max_context_length)
            )
        return found

    # -- model -----------------------------------------------------------------

    def _model(self, resume_from: Path | None) -> Any:
        spec = self.spec
        base = AutoModelForCausalLM.from_pretrained(spec.base_model_path, dtype=torch.float32)
        adapter = resume_from or (
            Path(spec.warm_start_adapter) if spec.warm_start_adapter else None
        )
        if adapter is not None:
            model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
        else:
            config = LoraConfig(
                r=spec.lora_rank,
                lora_alpha=spec.lora_alpha or 2 * spec.lora_rank,
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
                target_modules=list(spec.target_modules),
            )
            model = get_peft_model(base, config)
        model.peft_config["default"].base_model_name_or_path = spec.base_model_name
        return model.to(self.device)

    # -- the loop --------------------------------------------------------------

    def run(self) -> Event:
        spec = self.spec
        train, evaluation = self._load_data()
        epoch_tokens = sum(len(e.ids) for e in train)
        per_epoch = [len(epoch_batches(train, spec, e)) for e in range(spec.epochs)]
        total_steps = sum(per_epoch)
        found = read_position(self.checkpoints)
        position, folder = found if found else (Position(), None)
        model = self._model(folder)
        params, optimizer, lr_schedule = self._optimizer(model, folder, total_steps)
        self._emit(self._event("started", position, total_steps, epoch_tokens))
        model.train()
        window: list[float] = []
        clock = time.monotonic()
        tokens_since = 0
        last_report = clock
        while position.epoch < spec.epochs:
            batches = epoch_batches(train, spec, position.epoch)
            while position.batch < len(batches):
                stop = self._stop_requested()
                if stop is not None:
                    self._checkpoint(model, optimizer, lr_schedule, position)
                    kind = "cancelled" if stop == "cancel" else "paused"
                    return self._event(kind, position, total_steps, epoch_tokens)
                chosen = [train[i] for i in batches[position.batch]]
                loss = model(**collate(chosen, self.pad_id, self.device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
                window = [*window[-24:], float(loss.detach())]
                tokens = sum(len(e.ids) for e in chosen)
                position.batch += 1
                position.step += 1
                position.trained_tokens += tokens
                tokens_since += tokens
                now = time.monotonic()
                if now - last_report >= spec.progress_every_s:
                    speed = tokens_since / max(now - last_report, 1e-9)
                    self._emit(
                        self._event(
                            "progress", position, total_steps, epoch_tokens,
                            loss=sum(window) / len(window), speed=speed,
                        )
                    )  # fmt: skip
                    tokens_since, last_report = 0, now
            position.epoch += 1
            position.batch = 0
            eval_loss = self._evaluate(model, evaluation) if evaluation else None
            model.train()
            self._checkpoint(model, optimizer, lr_schedule, position)
            self._emit(
                self._event(
                    "checkpoint", position, total_steps, epoch_tokens,
                    loss=sum(window) / len(window) if window else None, eval_loss=eval_loss,
                )
            )  # fmt: skip
        self._save_output(model)
        return self._event("completed", position, total_steps, epoch_tokens, path=spec.output_dir)

    def _optimizer(
        self, model: Any, folder: Path | None, total_steps: int
    ) -> tuple[list[torch.nn.Parameter], Any, Any]:
        """AdamW and its schedule, restored from the checkpoint in ``folder`` if any."""
        spec = self.spec
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=spec.learning_rate, betas=(0.9, 0.999), weight_decay=spec.weight_decay
        )
        warmup = spec.warmup_steps
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule(s, total_steps, warmup)
        )
        if folder is not None:
            state = torch.load(folder / "optimizer.pt", map_location=self.device)
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["schedule"])
        return params, optimizer, lr_schedule

    def _evaluate(self, model: Any, examples: list[Example]) -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in batches_of(examples, list(range(len(examples))), self.spec):
                chosen = [examples[i] for i in batch]
                weight = sum(e.trained for e in chosen)
                loss = model(**collate(chosen, self.pad_id, self.device)).loss
                total += float(loss) * weight
                count += weight
        return total / max(count, 1)

    def _checkpoint(self, model: Any, optimizer: Any, lr_schedule: Any, at: Position) -> None:
        """Write a checkpoint folder, then point ``latest.json`` at it (atomically)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = f"step-{at.step:08d}"
        folder = self.checkpoints / name
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(str(folder))
        torch.save(
            {"optimizer": optimizer.state_dict(), "schedule": lr_schedule.state_dict()},
            folder / "optimizer.pt",
        )
        pointer = self.checkpoints / (LATEST + ".tmp")
        pointer.write_text(json.dumps({"folder": name, **at.__dict__}))
        os.replace(pointer, self.checkpoints / LATEST)
        for old in self.checkpoints.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def _save_output(self, model: Any) -> None:
        out = Path(self.spec.output_dir)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(str(partial))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)

    @staticmethod
    def _event(
        kind: Any,
        at: Position,
        total_steps: int,
        epoch_tokens: int,
        *,
        loss: float | None = None,
        eval_loss: float | None = None,
        speed: float | None = None,
        path: str = "",
    ) -> Event:
        return Event(
            kind,
            epoch=at.epoch,
            step=at.step,
            total_steps=total_steps,
            trained_tokens=at.trained_tokens,
            dataset_tokens=epoch_tokens,
            loss=loss,
            eval_loss=eval_loss,
            tokens_per_second=speed,
            path=path,
        )
