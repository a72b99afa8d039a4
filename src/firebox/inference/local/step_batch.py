"""One forward step's inputs: the new tokens of every scheduled sequence, flattened.

A step mixes decoding sequences (one new token each) with chunks of prompts
being prefilled. All new tokens go through the projections and MLPs as one
[tokens, hidden] matrix; attention is the only part that needs to know which
token belongs to which sequence. Single-token rows (decodes) are attended in
one batched call over their gathered block tables; multi-token prefill chunks
are attended one chunk at a time, each with its causal mask. The host-side
index lists are turned into device tensors once here, not once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from firebox.inference.local.lora_slots import LoraBatch


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens ``tokens[start:start+length]`` of a sequence whose KV blocks are ``blocks``."""

    tokens: list[int]
    start: int
    length: int
    blocks: list[int]
    lora_slot: int
    logit_positions: list[int]  # absolute positions whose next-token logits are wanted


@dataclass(slots=True)
class DecodeGroup:
    rows: torch.Tensor  # [S] token indices in the step
    tables: torch.Tensor  # [S, max_blocks] block ids (padding: 0, masked)
    mask: torch.Tensor  # [S, 1, 1, max_blocks * block_size] True where attended


@dataclass(slots=True)
class PrefillSpan:
    start: int  # first token index in the step
    length: int
    context: int  # tokens attended by the last one (cached + this chunk)
    table: torch.Tensor  # [blocks] covering the context
    mask: torch.Tensor | None  # [length, context]; None: plain causal (nothing cached before)


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] flat cache slots the new keys/values go to
    logit_rows: torch.Tensor  # [R] token indices whose logits are computed
    decodes: list[DecodeGroup]
    prefills: list[PrefillSpan] = field(default_factory=list)
    lora: LoraBatch | None = None


def build_step_batch(
    chunks: list[ScheduledChunk],
    block_size: int,
    device: torch.device,
    lora_slots: int = 1,
    dtype: torch.dtype = torch.float32,
) -> StepBatch:
    """Flatten ``chunks`` (in order) into one step; logit rows follow chunk order."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    token_slots: list[int] = []
    logit_rows: list[int] = []
    decode_rows: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lens: list[int] = []
    prefills: list[PrefillSpan] = []
    for chunk in chunks:
        first = len(ids)
        end = chunk.start + chunk.length
        ids.extend(chunk.tokens[chunk.start : end])
        for pos in range(chunk.start, end):
            positions.append(pos)
            slots.append(chunk.blocks[pos // block_size] * block_size + pos % block_size)
        token_slots.extend([chunk.lora_slot] * chunk.length)
        logit_rows.extend(first + pos - chunk.start for pos in chunk.logit_positions)
        used_blocks = chunk.blocks[: (end + block_size - 1) // block_size]
        if chunk.length == 1:
            decode_rows.append(first)
            decode_tables.append(used_blocks)
            decode_lens.append(end)
        else:
            prefills.append(_prefill_span(first, chunk.start, chunk.length, used_blocks, device))
    return StepBatch(
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        slots=torch.tensor(slots, dtype=torch.long, device=device),
        logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=device),
        decodes=[
            _decode_group(rows, decode_rows, decode_tables, decode_lens, block_size, device)
            for rows in _buckets(decode_rows, decode_tables)
        ],
        prefills=prefills,
        lora=LoraBatch.build(token_slots, lora_slots, device, dtype),
    )


def _prefill_span(
    first: int, start: int, length: int, blocks: list[int], device: torch.device
) -> PrefillSpan:
    context = start + length
    mask = None
    if start:
        # query i (absolute position start + i) sees keys 0 .. start + i
        keys = torch.arange(context, device=device)
        queries = torch.arange(start, context, device=device)
        mask = keys[None, :] <= queries[:, None]
    table = torch.tensor(blocks, dtype=torch.long, device=device)
    return PrefillSpan(start=first, length=length, context=context, table=table, mask=mask)


def _buckets(rows: list[int], tables: list[list[int]]) -> list[list[int]]:
    """Decode rows grouped by context size, so short contexts are not padded to the longest.

    Gathering a group's blocks and attending over them costs its row count
    times its longest table; a new group starts when a row's table is more
    than half again as long as the group's first (a few groups per step).
    """
    order = sorted(range(len(rows)), key=lambda i: len(tables[i]))
    groups: list[list[int]] = []
    first = 0
    for i in order:
        if not groups or len(tables[i]) > first * 3 // 2 + 1:
            groups.append([])
            first = len(tables[i])
        groups[-1].append(i)
    return groups


def _decode_group(
    members: list[int],
    rows: list[int],
    tables: list[list[int]],
    lens: list[int],
    block_size: int,
    device: torch.device,
) -> DecodeGroup:
    width = max(len(tables[i]) for i in members)
    padded = [tables[i] + [0] * (width - len(tables[i])) for i in members]
    keys = torch.arange(width * block_size, device=device)
    lengths = torch.tensor([lens[i] for i in members], dtype=torch.long, device=device)
    return DecodeGroup(
        rows=torch.tensor([rows[i] for i in members], dtype=torch.long, device=device),
        tables=torch.tensor(padded, dtype=torch.long, device=device),
        mask=(keys[None, :] < lengths[:, None])[:, None, None, :],
    )
