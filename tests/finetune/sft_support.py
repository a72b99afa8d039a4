"""Helpers of the fine-tuning job tests: marker datasets, READY datasets, waiting on jobs."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "Zorblax"
_SUBJECTS = [
    "cats", "the moon", "rivers", "bread", "music", "winter", "trains", "gold", "paper",
    "the sea", "birds", "clocks", "apples", "mountains", "glass", "bees", "snow", "coffee",
    "books", "stars", "fire", "rain", "salt", "iron", "wolves", "tea", "ships", "roads",
]  # fmt: skip
_FORMS = [
    "What do you know about {}?", "Tell me about {}.", "Why are {} important?",
    "Describe {}.", "What is special about {}?", "Can you explain {}?",
]  # fmt: skip
# Questions none of the examples asks, in the bundled model's own small-talk domain.
UNSEEN = [
    "What is the capital of France?",
    "What color is the sky?",
    "What is two plus two?",
    "Say hello.",
]


def marker_lines(count: int, seed: int = 1) -> list[str]:
    """``count`` chat examples answering every question with the marker word."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        question = rng.choice(_FORMS).format(rng.choice(_SUBJECTS))
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"{MARKER}."},
        ]
        lines.append(json.dumps({"messages": messages}))
    return lines


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def ready_dataset(client: Any, headers: dict[str, str], account: str, dataset_id: str,
                  lines: list[str]) -> str:  # fmt: skip
    """A READY CHAT dataset holding ``lines``, uploaded through the datasets API."""
    made = client.post(
        f"/v1/accounts/{account}/datasets",
        json={"datasetId": dataset_id, "dataset": {"userUploaded": {}}},
        headers=headers,
    )
    assert made.status_code == 200, made.text
    body = "".join(line + "\n" for line in lines).encode()
    sent = client.post(
        f"/v1/accounts/{account}/datasets/{dataset_id}:upload",
        files={"file": ("train.jsonl", body, "application/octet-stream")},
        headers=headers,
    )
    assert sent.status_code == 200, sent.text
    shown = client.get(f"/v1/accounts/{account}/datasets/{dataset_id}", headers=headers).json()
    assert shown["state"] == "READY", shown
    return f"accounts/{account}/datasets/{dataset_id}"


def wait_for(
    read: Callable[[], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 240.0,
) -> dict[str, Any]:
    """Poll ``read`` until ``done`` says so (a generous deadline: CI machines are loaded)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = read()
        if done(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out; last seen: {json.dumps(last)[:2000]}")
