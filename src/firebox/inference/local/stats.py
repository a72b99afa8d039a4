"""What the local text engine reports about itself, for tests, metrics and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot for tests and metrics, refreshed after every step."""

    block_size: int
    blocks_total: int
    blocks_used: int
    blocks_free: int
    blocks_cached: int
    running: int
    waiting: int
    adapters_loaded: tuple[str, ...]
    adapter_loads: int
    forward_passes: int
    prompt_tokens_computed: int
    prompt_tokens_cached: int
    preemptions: int
