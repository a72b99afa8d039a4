"""The in-process engine runs a batch job's sequences only when no interactive one needs a step."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from firebox.inference.engine import TextDelta
from firebox.inference.local.text_engine import LocalTextEngine
from tests.inference.test_local_support import build_model, completion, prompts


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_background_sequences_sit_out_while_an_interactive_one_runs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folder = build_model(tmp_path / "model", seed=7)
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=2048, max_batch_tokens=64)
    try:
        first, second = prompts(2, 400, seed=3, lengths=(12, 12))
        background = replace(completion(first, request_id="bg", max_tokens=150), background=True)
        produced = {"bg": 0}

        async def run_background() -> None:
            async for event in engine.generate(background):
                if isinstance(event, TextDelta):
                    produced["bg"] += max(event.token_count, 1)

        task = asyncio.create_task(run_background())
        deadline = time.monotonic() + 60
        while produced["bg"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert produced["bg"] >= 3
        at_start: int | None = None
        tokens = 0
        async for event in engine.generate(completion(second, request_id="it", max_tokens=20)):
            at_start = produced["bg"] if at_start is None else at_start
            if isinstance(event, TextDelta):
                tokens += max(event.token_count, 1)
        assert at_start is not None and tokens >= 5
        assert not task.done()  # still generating: it was paused, not finished
        assert produced["bg"] - at_start <= 1  # at most the step already under way
        await asyncio.wait_for(task, 120)
        assert produced["bg"] > at_start + 1  # and it went on afterwards
    finally:
        engine.shutdown()
