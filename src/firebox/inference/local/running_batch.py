"""The running batch: admission, chunked prefill, preemption, sampling and results.

Every step is planned afresh (vLLM's V1 idea of a token budget per step):
first one token for every decoding sequence, oldest first; then chunks of
prompts already being prefilled; then new requests from the waiting queue,
first come first served, while the budget (``max_batch_tokens``) lasts. So a
long prompt is prefilled over several steps, and the running decodes keep
producing a token every step meanwhile; requests join and leave at any step.

KV memory: a new request is admitted only when its whole prompt's blocks can
be allocated (after reusing its cached prefix). Decoding then grows a
sequence a block at a time; when no block is left, the most recently admitted
sequence is preempted *by recompute*: its blocks are freed and it goes back to
the head of the queue with its tokens so far, to be prefilled again later
(mostly from the prefix cache). Nothing is swapped, and a request is never
refused for lack of memory once its prompt fitted.

An add-on request needs a LoRA slot; if all slots are pinned by running
requests it waits, and later requests for loaded adapters may pass it.

Not thread-safe: the scheduler thread is its only user. Events go to each
request's ``outbox``; the scheduler delivers them after the step.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch

from firebox.errors import FailedPrecondition, FireboxError
from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationFailed,
    PromptInfo,
    UsageReport,
)
from firebox.inference.local.choice_output import TokenTexts, echo_delta
from firebox.inference.local.kv_cache import BlockPool, KVCache
from firebox.inference.local.lora_slots import LoraSlots
from firebox.inference.local.sampling import TokenLogprob, sample, token_logprobs
from firebox.inference.local.sequence import RequestGroup, Sequence
from firebox.inference.local.stats import EngineStats
from firebox.inference.local.step_batch import ScheduledChunk, build_step_batch
from firebox.inference.local.text_model import TextModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_tokens: int
    max_running: int


class RunningBatch:
    """The running and waiting sequences, and what they hold: KV blocks and LoRA slots."""

    def __init__(
        self,
        model: TextModel,
        cache: KVCache,
        pool: BlockPool,
        lora: LoraSlots,
        texts: TokenTexts,
        eos_ids: frozenset[int],
        limits: BatchLimits,
    ) -> None:
        self._model = model
        self._cache = cache
        self._pool = pool
        self._lora = lora
        self._texts = texts
        self._eos = eos_ids
        self._limits = limits
        self._block = cache.block_size
        self._device = cache.data.device
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._dirty: dict[int, RequestGroup] = {}
        self._admissions = 0
        self._counters = {"forward": 0, "computed": 0, "cached": 0, "preempt": 0}

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    def add(self, group: RequestGroup) -> None:
        self._waiting.append(group.sequences[0])

    def cancel(self, group: RequestGroup) -> None:
        """The caller went away: forget ``group`` without sending it anything more."""
        group.cancelled = True
        self.drop(group)

    def take_outboxes(self) -> list[RequestGroup]:
        """The requests with events to deliver since the last call."""
        groups = list(self._dirty.values())
        self._dirty.clear()
        return groups

    def live_groups(self) -> list[RequestGroup]:
        groups = {id(s.group): s.group for s in [*self._running, *self._waiting]}
        return list(groups.values())

    def _emit(self, group: RequestGroup, item: GenerationEvent | BaseException | None) -> None:
        group.outbox.append(item)
        self._dirty[id(group)] = group

    # -- planning ------------------------------------------------------------------------

    def step(self) -> bool:
        """Plan and run one forward step; False when nothing could be scheduled."""
        plan = self._schedule()
        if not plan:
            return False
        chunks, prompt_rows = [], []
        for seq, length in plan:
            positions, lp_count = self._logit_positions(seq, length)
            prompt_rows.append(lp_count)
            chunks.append(
                ScheduledChunk(
                    tokens=seq.tokens,
                    start=seq.num_computed,
                    length=length,
                    blocks=seq.blocks,
                    lora_slot=seq.group.lora_slot,
                    logit_positions=positions,
                )
            )
        batch = build_step_batch(
            chunks, self._block, self._device, self._lora.capacity + 1, self._cache.data.dtype
        )
        logits = self._model.forward(batch)
        self._counters["forward"] += 1
        self._absorb(plan, prompt_rows, logits)
        return True

    def _schedule(self) -> list[tuple[Sequence, int]]:
        budget = self._limits.max_batch_tokens
        plan: list[tuple[Sequence, int]] = []
        # Batch jobs' sequences (background) keep their blocks but sit out every step
        # while an interactive one runs or waits: interactive latency first.
        pause = any(not s.group.background for s in (*self._running, *self._waiting))
        budget = self._plan_running(plan, budget, pause)
        i = 0
        while budget > 0 and i < len(self._waiting):
            seq = self._waiting[i]
            group = seq.group
            if pause and group.background:
                i += 1
                continue
            if len(self._running) >= self._limits.max_running:
                if not (pause and self._yield_background()):
                    break
                i += 1  # the paused sequence went to the front of the queue
                continue
            if group.adapter is not None and not group.lora_slot:
                try:
                    slot = self._lora.acquire(group.adapter)
                except Exception as exc:  # a broken add-on fails its own request, nothing else
                    self.fail(
                        group,
                        FailedPrecondition(
                            f"Add-on {group.adapter.name!r} could not be loaded: {exc}"
                        ),
                    )
                    continue
                if slot is None:
                    i += 1  # every slot is pinned: let requests for loaded add-ons pass
                    continue
                group.lora_slot = slot
            if not self._admit(seq):
                if pause and self._yield_background():
                    i += 1  # its blocks are free now: try again
                    continue
                break  # out of KV blocks: first come, first served
            del self._waiting[i]
            length = min(seq.remaining, budget)
            plan.append((seq, length))
            budget -= length
        return plan

    def _plan_running(self, plan: list[tuple[Sequence, int]], budget: int, pause: bool) -> int:
        """Add the running sequences' next chunks to ``plan``; the budget left."""
        i = 0
        while i < len(self._running) and budget > 0:  # decodes, oldest first
            seq = self._running[i]
            if pause and seq.group.background:
                i += 1
                continue
            if seq.remaining == 1:
                if not self._ensure_blocks(seq, len(seq.tokens)):
                    continue  # seq itself was preempted
                plan.append((seq, 1))
                budget -= 1
            i += 1
        for seq in self._running:  # prompts being prefilled
            if budget <= 0:
                break
            if pause and seq.group.background:
                continue
            if seq.remaining > 1:
                length = min(seq.remaining, budget)
                plan.append((seq, length))
                budget -= length
        return budget

    def _yield_background(self) -> bool:
        """Preempt the youngest paused batch sequence, so an interactive one fits; False if none."""
        for seq in reversed(self._running):
            if seq.group.background:
                self._preempt(seq)
                return True
        return False

    def _admit(self, seq: Sequence) -> bool:
        group = seq.group
        cap = min(group.cache_cap, len(seq.tokens) - 1)
        matched = self._pool.match(group.prompt_hashes[: max(cap, 0) // self._block])
        needed = -(-len(seq.tokens) // self._block) - len(matched)
        reserve = 0
        if seq.index == 0 and not group.forked and group.prompt_len % self._block:
            reserve = group.params.n - 1
        fresh = self._pool.allocate(needed + reserve)
        if fresh is None:
            self._pool.release(matched)
            return False
        seq.blocks = matched + fresh[:needed]
        group.reserved = fresh[needed:]
        seq.num_computed = len(matched) * self._block
        seq.registered = len(matched)
        self._admissions += 1
        seq.admitted_at = self._admissions
        self._running.append(seq)
        if not group.admitted:
            group.admitted = True
            group.cached_tokens = seq.num_computed
            self._counters["cached"] += seq.num_computed
            self._emit(
                group, PromptInfo(prompt_tokens=group.prompt_len, cached_tokens=seq.num_computed)
            )
        return True

    def _ensure_blocks(self, seq: Sequence, tokens: int) -> bool:
        """Grow ``seq`` to hold ``tokens``, preempting the youngest sequences if needed."""
        needed = -(-tokens // self._block) - len(seq.blocks)
        while needed > 0:
            fresh = self._pool.allocate(needed)
            if fresh is not None:
                seq.blocks.extend(fresh)
                return True
            victim = self._running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self._running.remove(seq)
        self._release_blocks(seq)
        self._waiting.appendleft(seq)
        self._counters["preempt"] += 1

    def _release_blocks(self, seq: Sequence) -> None:
        self._pool.release(seq.blocks)
        seq.blocks = []
        seq.num_computed = seq.registered = 0
        group = seq.group
        if seq.index == 0 and group.reserved:
            self._pool.release(group.reserved)
            group.reserved = []

    def _logit_positions(self, seq: Sequence, length: int) -> tuple[list[int], int]:
        """Positions whose logits the step must compute: echoed prompt logprobs, then the sample."""
        group = seq.group
        start, end = seq.num_computed, seq.num_computed + length
        positions = []
        if group.wants_prompt_logprobs and not group.forked:
            first = max(start, len(group.prompt_logprobs))
            positions = list(range(first, min(end, group.prompt_len - 1)))
        lp_count = len(positions)
        if end == len(seq.tokens):
            positions.append(end - 1)
        if start < group.prompt_len:
            self._counters["computed"] += min(end, group.prompt_len) - start
        return positions, lp_count

    # -- results -------------------------------------------------------------------------

    def _absorb(
        self, plan: list[tuple[Sequence, int]], prompt_rows: list[int], logits: torch.Tensor
    ) -> None:
        """Take in one step's logits: prompt logprobs, then one sample per finished sequence.

        Whatever one sequence's share of this raises (its logprobs, its
        sampling, its detokenization) ends that sequence's request with a
        ``GenerationFailed``; every other sequence is processed as if it were
        not there. Only the forward pass itself is shared by all.
        """
        row = 0
        to_sample: list[tuple[Sequence, int]] = []
        for (seq, length), lp_count in zip(plan, prompt_rows, strict=True):
            first = row
            row += lp_count + (1 if seq.num_computed + length == len(seq.tokens) else 0)
            if seq.group.done:
                continue
            try:
                to_sample.extend(self._advance(seq, length, lp_count, logits, first))
            except Exception as exc:
                self._fault(seq, exc)
        live = [(s, r) for s, r in to_sample if not s.finished and not s.group.done]
        if not live:
            return
        rows = logits[torch.tensor([r for _, r in live], device=logits.device)]
        tokens = sample(rows, [s.sampler for s, _ in live])
        wanted = {
            i: token
            for i, ((s, _), token) in enumerate(zip(live, tokens, strict=True))
            if s.group.params.logprobs and isinstance(token, int)
        }
        lps: dict[int, TokenLogprob] = {}
        if wanted:
            found = token_logprobs(
                rows[list(wanted)],
                list(wanted.values()),
                [live[i][0].group.params.top_logprobs for i in wanted],
            )
            lps = dict(zip(wanted, found, strict=True))
        for i, ((seq, _), token) in enumerate(zip(live, tokens, strict=True)):
            if seq.group.done:
                continue  # a sibling's fault already ended this request
            try:
                if isinstance(token, Exception):
                    raise token
                self._append(seq, token, lps.get(i))
            except Exception as exc:
                self._fault(seq, exc)

    def _advance(
        self, seq: Sequence, length: int, lp_count: int, logits: torch.Tensor, row: int
    ) -> list[tuple[Sequence, int]]:
        """Book ``seq``'s computed chunk; who samples from its logits row (if any)."""
        group = seq.group
        if lp_count:
            start = len(group.prompt_logprobs)
            targets = group.prompt_ids[start + 1 : start + 1 + lp_count]
            top = [group.params.top_logprobs] * lp_count
            group.prompt_logprobs.extend(token_logprobs(logits[row : row + lp_count], targets, top))
            row += lp_count
        seq.num_computed += length
        full = min(seq.num_computed, group.prompt_len) // self._block
        for b in range(seq.registered, full):
            self._pool.register(seq.blocks[b], group.prompt_hashes[b])
        seq.registered = max(seq.registered, full)
        if seq.num_computed == len(seq.tokens):
            return [(s, row) for s in self._fork(seq)]
        return []

    def _fault(self, seq: Sequence, exc: Exception) -> None:
        """``seq`` could not go on: end its request (and only it), keeping what it produced."""
        group = seq.group
        log.warning(
            "request %s choice %d failed in the local engine: %r", group.request_id, seq.index, exc
        )
        self.fail(
            group,
            GenerationFailed(
                f"The local engine could not continue this request ({exc}). Other requests "
                "were not affected; retry, or change the sampling parameters."
            ),
        )

    def _fork(self, seq: Sequence) -> list[Sequence]:
        """Who samples from ``seq``'s new logits: itself, plus its siblings the first time."""
        group = seq.group
        if seq.index or group.forked:
            return [seq]
        group.forked = True
        if group.kind == "completion" and group.params.echo:
            lps = group.prompt_logprobs if group.wants_prompt_logprobs else None
            for s in group.sequences:
                self._emit(
                    group,
                    echo_delta(s.index, group.prompt_text, group.prompt_ids, lps, self._texts),
                )
        full = group.prompt_len // self._block
        for child in group.sequences[1:]:
            child.blocks = seq.blocks[:full]
            self._pool.share(child.blocks)
            if group.prompt_len % self._block:
                copy = group.reserved.pop()
                self._cache.copy_block(seq.blocks[full], copy)
                child.blocks = [*child.blocks, copy]
            child.num_computed = group.prompt_len
            child.registered = seq.registered
            child.admitted_at = seq.admitted_at
            self._running.append(child)
        if group.max_tokens == 0:
            for s in group.sequences:
                self._finish(s, "length")
        return list(group.sequences)

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        group = seq.group
        seq.tokens.append(token)
        seq.sampler.output_ids.append(token)
        eos = token in self._eos
        delta = seq.output.add(token, logprob, hidden=eos)
        if delta is not None:
            self._emit(group, delta)
        if eos or seq.output.stopped:
            self._finish(seq, "stop")
        elif seq.output_len >= group.max_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        group = seq.group
        seq.finished = True
        last = seq.output.finish()
        if last is not None:
            self._emit(group, last)
        self._emit(group, ChoiceFinished(index=seq.index, finish_reason=reason))
        if seq in self._running:
            self._running.remove(seq)
        self._release_blocks(seq)
        group.finished_choices += 1
        if group.finished_choices == group.params.n:
            completion = sum(s.output_len for s in group.sequences)
            self._emit(group, UsageReport(group.prompt_len, completion, group.cached_tokens))
            self._emit(group, None)
            self._close(group)

    def fail(self, group: RequestGroup, error: FireboxError) -> None:
        """End ``group`` with ``error``, after a usage report of what it produced (for billing)."""
        if group.done:
            return
        if group.admitted:
            completion = sum(max(s.output_len, 0) for s in group.sequences)
            self._emit(group, UsageReport(group.prompt_len, completion, group.cached_tokens))
        self._emit(group, error)
        self.drop(group)

    def drop(self, group: RequestGroup) -> None:
        """Remove every sequence of ``group`` from the queues and free what it holds."""
        if group.done:
            return
        for seq in group.sequences:
            if seq in self._running:
                self._running.remove(seq)
            elif seq in self._waiting:
                self._waiting.remove(seq)
            if seq.blocks:
                self._release_blocks(seq)
        self._close(group)

    def _close(self, group: RequestGroup) -> None:
        group.done = True
        if group.reserved:
            self._pool.release(group.reserved)
            group.reserved = []
        self._lora.release(group.lora_slot)
        group.lora_slot = 0

    def stats(self) -> EngineStats:
        pool = self._pool.stats()
        return EngineStats(
            block_size=self._block,
            blocks_total=pool.total,
            blocks_used=pool.used,
            blocks_free=pool.free,
            blocks_cached=pool.cached,
            running=len(self._running),
            waiting=len(self._waiting),
            adapters_loaded=self._lora.loaded(),
            adapter_loads=self._lora.loads,
            forward_passes=self._counters["forward"],
            prompt_tokens_computed=self._counters["computed"],
            prompt_tokens_cached=self._counters["cached"],
            preemptions=self._counters["preempt"],
        )
