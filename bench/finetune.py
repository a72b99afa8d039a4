"""Fine-tuning: the trainer's tokens/s against a plain transformers Trainer + peft.

Both train the same LoRA (r=8, alpha=16, every linear layer, fp32) on
``models/firebox-tiny``, on one torch thread (``--threads``), over the same
chat examples with the loss on assistant tokens only (our per-message
template rendering), the same batches (``--batch`` examples, padded to the
longest), the same number of optimizer steps and learning rate. Tokens/s
counts the examples' tokens (no padding), over the training loop only
(model loading and tokenizing excluded for both). The two alternate
``--rounds`` times; the table shows each round and the median.

With ``--serving``, it also starts ``firebox serve`` and measures the chat
latency of firebox-tiny (sequential requests, 16 new tokens) while idle and
while a fine-tuning job trains in its worker process.

Appends the figures, with date and machine, to ``docs/benchmarks.md``
under "Fine-tuning".

    .venv/bin/python bench/finetune.py [--steps 60] [--rounds 3] [--threads 1] [--serving]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "models" / "firebox-tiny"
SECTION = "## Fine-tuning"


def examples_file(folder: Path, count: int) -> Path:
    from tests.finetune.sft_support import marker_lines, write_jsonl

    return write_jsonl(folder / "train.jsonl", marker_lines(count, seed=7))


def ours(train: Path, steps: int, batch: int, threads: int, out: Path) -> float:
    """Tokens/s of ``firebox.finetune.worker.trainer`` (its loop only)."""
    from firebox.finetune.worker.protocol import Event, TrainSpec
    from firebox.finetune.worker.trainer import Trainer

    spec = TrainSpec(
        job="bench", base_model_path=str(MODEL), train_files=[str(train)],
        output_dir=str(out / "adapter"), checkpoint_dir=str(out / "ckpt"),
        base_model_name="firebox-tiny", epochs=1, learning_rate=1e-3,
        batch_size_samples=batch, batch_size_tokens=10**9, threads=threads,
        progress_every_s=3600, device="cpu",
    )  # fmt: skip
    marks: list[tuple[float, int]] = []

    def emit(event: Event) -> None:
        marks.append((time.perf_counter(), event.trained_tokens))

    Trainer(spec, emit, lambda: None).run()
    started, _ = marks[0]  # the "started" event: data and model loaded
    done = next(m for m in marks if m[1] > 0)  # the epoch's checkpoint
    return done[1] / (done[0] - started)


def reference(train: Path, batch: int, threads: int, out: Path) -> float:
    """Tokens/s of transformers' ``Trainer`` with a peft LoRA, on the same examples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from firebox.finetune.worker.examples import load_examples
    from firebox.finetune.worker.protocol import DEFAULT_TARGETS
    from firebox.finetune.worker.trainer import collate

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    examples = load_examples(tokenizer, train, "CHAT", 2048)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=list(DEFAULT_TARGETS),
    )  # fmt: skip
    model = get_peft_model(model, config)
    args = TrainingArguments(
        output_dir=str(out / "hf"), per_device_train_batch_size=batch, num_train_epochs=1,
        learning_rate=1e-3, logging_steps=10**6, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
        max_grad_norm=1.0, lr_scheduler_type="cosine",
    )  # fmt: skip
    pad = tokenizer.pad_token_id

    def collator(items: list[Any]) -> dict[str, Any]:
        return collate(items, pad, torch.device("cpu"))

    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    result = trainer.train()
    tokens = sum(len(e.ids) for e in examples)
    return tokens / float(result.metrics["train_runtime"])


def serving_latency(folder: Path, threads: int, nice: int) -> dict[str, float]:
    """Median chat latency (ms) of firebox-tiny, idle and while a job trains."""
    import httpx
    from tests.finetune.sft_support import marker_lines, write_jsonl
    from tests.support.api import bearer, create_account, member_key
    from tests.support.server import start_server

    admin = "fb_bench_operator_key_0123456789abcdef0123"
    env = {
        "FIREBOX_ADMIN_KEY": admin, "FIREBOX_ACCESS_LOG": "false",
        "FIREBOX_WARM_LOCAL_ENGINES": "true", "FIREBOX_FINETUNE_THREADS": str(threads),
        "FIREBOX_FINETUNE_NICE": str(nice),
    }  # fmt: skip
    server = start_server(folder / "server", env=env)
    try:
        http = httpx.Client(base_url=server.url, timeout=120)
        create_account(http, bearer(admin), "bench")
        key = bearer(member_key(http, bearer(admin), "bench", "b", "admin"))
        body = {
            "model": "accounts/firebox/models/firebox-tiny",
            "messages": [{"role": "user", "content": "What color is the sky?"}],
            "max_tokens": 16, "temperature": 0,
        }  # fmt: skip

        def median_ms(count: int) -> float:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                assert http.post("/v1/chat/completions", json=body, headers=key).status_code == 200
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        median_ms(5)  # warm the engine
        idle = median_ms(30)
        file = write_jsonl(folder / "long.jsonl", marker_lines(200))
        made = http.post("/v1/accounts/bench/datasets", headers=key,
                         json={"datasetId": "long", "dataset": {"userUploaded": {}}})  # fmt: skip
        assert made.status_code == 200, made.text
        with file.open("rb") as handle:
            up = http.post("/v1/accounts/bench/datasets/long:upload", headers=key,
                           files={"file": ("long.jsonl", handle)})  # fmt: skip
        assert up.status_code == 200, up.text
        job = {"dataset": "accounts/bench/datasets/long",
               "baseModel": "accounts/firebox/models/firebox-tiny", "epochs": 50}  # fmt: skip
        assert http.post("/v1/accounts/bench/supervisedFineTuningJobs?supervisedFineTuningJobId=j",
                         json=job, headers=key).status_code == 200  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            got = http.get("/v1/accounts/bench/supervisedFineTuningJobs/j", headers=key).json()
            if got["state"] == "JOB_STATE_RUNNING" and got["jobProgress"]["step"] > 0:
                break
            time.sleep(0.5)
        training = median_ms(30)
        after = http.get("/v1/accounts/bench/supervisedFineTuningJobs/j", headers=key).json()
        assert after["state"] == "JOB_STATE_RUNNING", after["state"]
        http.post("/v1/accounts/bench/supervisedFineTuningJobs/j:cancel", json={}, headers=key)
        while time.monotonic() < deadline + 300:
            got = http.get("/v1/accounts/bench/supervisedFineTuningJobs/j", headers=key).json()
            if got["state"] == "JOB_STATE_CANCELLED":
                break
            time.sleep(0.5)
        after_ms = median_ms(30)  # idle again: the machine's own drift, for comparison
        return {"idle_ms": idle, "training_ms": training, "idle_after_ms": after_ms}
    finally:
        server.stop()


def record(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION in current:
        head, _, rest = current.partition(SECTION)
        following = rest.find("\n## ")
        current = head + text + (rest[following:] if following >= 0 else "")
    else:
        current = current.rstrip() + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serving", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--nice", type=int, default=10, help="FIREBOX_FINETUNE_NICE (--serving)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train = examples_file(folder, args.steps * args.batch)
        for round_ in range(args.rounds if args.steps else 0):
            mine = ours(train, args.steps, args.batch, args.threads, folder / f"o{round_}")
            theirs = reference(train, args.batch, args.threads, folder / f"r{round_}")
            rows.append((round_ + 1, mine, theirs))
            print(f"round {round_ + 1}: firebox trainer {mine:,.0f} tok/s, "
                  f"transformers Trainer {theirs:,.0f} tok/s", flush=True)  # fmt: skip
        latency = serving_latency(folder, args.threads, args.nice) if args.serving else None
    mine_med = statistics.median(r[1] for r in rows) if rows else 0.0
    theirs_med = statistics.median(r[2] for r in rows) if rows else 1.0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION, "",
        f"`bench/finetune.py --steps {args.steps} --batch {args.batch} --rounds {args.rounds} "
        f"--threads {args.threads}{' --serving' if args.serving else ''}`, {when}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared, loaded: compare within a run).",
        "", "LoRA r=8 on firebox-tiny, assistant-only loss, same examples and batches; "
        "tokens/s of the training loop (no padding counted).", "",
        "| round | Firebox trainer (tok/s) | transformers Trainer + peft (tok/s) | ratio |",
        "|---|---|---|---|",
    ]  # fmt: skip
    lines += [f"| {n} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |" for n, a, b in rows]
    if rows:
        lines.append(
            f"| median | {mine_med:,.0f} | {theirs_med:,.0f} | {mine_med / theirs_med:.2f} |"
        )
    if latency:
        lines += [
            "", "Chat latency of firebox-tiny (16 tokens, sequential, median of 30), the job "
            "training in its worker process:", "",
            "| worker niceness | idle before | while a job trains | idle after |",
            "|---|---|---|---|",
            f"| {args.nice} | {latency['idle_ms']:.0f} ms | {latency['training_ms']:.0f} ms | "
            f"{latency['idle_after_ms']:.0f} ms |",
        ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({"rows": rows, "latency": latency}))
    if not args.no_record:
        record(text)


if __name__ == "__main__":
    main()
