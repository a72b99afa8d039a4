"""How fast a dataset is validated and counted: examples/s and MB/s of the validator.

    PYTHONPATH=src .venv/bin/python bench/dataset_validation.py [--examples 20000]

Generates chat examples in memory (a system, a user and an assistant turn of
a few dozen words each), then feeds them through ``Validator`` with the
bundled firebox-tiny tokenizer and chat template, as ``:upload`` and
``:validateUpload`` do. One process, one thread.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from firebox.finetune.dataset_tokens import counter_for
from firebox.finetune.dataset_validation import Validator

MODELS = Path(__file__).resolve().parents[1] / "models" / "firebox-tiny"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=20_000)
    args = parser.parse_args()
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "and",
        "then",
        "some",
        "more",
        "words",
        "follow",
    ]
    lines = []
    for n in range(args.examples):
        text = " ".join(words[(n + i) % len(words)] for i in range(40))
        example = {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"Question {n}: {text}?"},
                {"role": "assistant", "content": f"Answer {n}: {text}."},
            ]
        }
        lines.append(json.dumps(example))
    data = ("\n".join(lines) + "\n").encode()
    counter = counter_for(MODELS)
    start = time.perf_counter()
    validator = Validator(counter, max_example_tokens=2048)
    validator.feed("bench.jsonl", io.BytesIO(data))
    report = validator.finish()
    seconds = time.perf_counter() - start
    assert report.ok and report.example_count == args.examples
    print(
        f"{args.examples} examples, {len(data) / 1e6:.1f} MB, {report.token_count} tokens: "
        f"{seconds:.2f} s = {args.examples / seconds:,.0f} examples/s, "
        f"{len(data) / 1e6 / seconds:.1f} MB/s, {report.token_count / seconds:,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
