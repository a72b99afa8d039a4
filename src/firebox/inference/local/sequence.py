"""A request inside the engine (``RequestGroup``) and its choices (``Sequence``).

A request with ``n`` choices starts as one sequence that prefills the
prompt; when the prompt's last logits are known it forks into ``n``
sequences that share the prompt's KV blocks (the partial last block is
copied) and decode independently. A sequence is its token list plus how
many of those tokens have their keys/values in the cache: prefill, decode
and recompute after preemption are all "compute the tokens from
``num_computed`` on", which keeps the scheduler to one code path.

Events for the caller are delivered in batches, one per step, onto the
request's asyncio queue with ``loop.call_soon_threadsafe``: the scheduler
thread never touches the event loop otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import torch

from firebox.inference.engine import GenerationEvent, SamplingParams
from firebox.inference.local.choice_output import ChoiceOutput
from firebox.inference.local.lora_files import AdapterSpec
from firebox.inference.local.sampling import RowSampler, TokenLogprob

# What a request's queue carries: events, an error to raise, or None for "done".
Delivery = list[GenerationEvent | BaseException | None]


class EventSink:
    """The asyncio side of one request: its loop and queue, written from the scheduler thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Delivery]) -> None:
        self._loop = loop
        self._queue = queue

    def send(self, items: Delivery) -> bool:
        """Queue ``items``; False if the loop is gone (the caller will never read them)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, items)
        except RuntimeError:
            return False
        return True


@dataclass(eq=False, slots=True)
class RequestGroup:
    """One generation request: the prompt, parameters and shared state of its choices."""

    request_id: str
    kind: Literal["chat", "completion"]
    params: SamplingParams
    prompt_ids: list[int]
    prompt_text: str
    max_tokens: int
    adapter: AdapterSpec | None
    cache_cap: int  # prompt tokens that may come from the prefix cache
    prompt_hashes: list[bytes]
    sink: EventSink
    prompt_id_set: torch.Tensor  # unique prompt ids, for the repetition penalty
    sequences: list[Sequence] = field(default_factory=list)
    lora_slot: int = 0
    forked: bool = False
    reserved: list[int] = field(default_factory=list)  # blocks set aside for the fork's copies
    cached_tokens: int = 0
    admitted: bool = False
    done: bool = False
    cancelled: bool = False
    finished_choices: int = 0
    background: bool = False  # a batch job's: paused while an interactive request runs
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    outbox: Delivery = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.kind == "completion" and self.params.echo and self.params.logprobs

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.tokens) - self.prompt_len for s in self.sequences)


@dataclass(eq=False, slots=True)
class Sequence:
    """One choice: its tokens, cache blocks and output state."""

    group: RequestGroup
    index: int
    tokens: list[int]
    output: ChoiceOutput
    sampler: RowSampler
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    registered: int = 0  # prompt blocks already published to (or taken from) the prefix cache
    finished: bool = False
    admitted_at: int = 0  # admission order, to pick the youngest for preemption

    @property
    def output_len(self) -> int:
        return len(self.tokens) - self.group.prompt_len

    @property
    def remaining(self) -> int:
        """Tokens still to compute before the next sample."""
        return len(self.tokens) - self.num_computed
