"""Multi-LoRA: loaded add-ons stacked per projection group, applied per token, never merged.

This is the S-LoRA/Punica idea on plain torch. The projections that read the
same input are grouped as the base weights are fused (q/k/v, o, gate/up,
down). Each group that any loaded add-on targets has two padded stacks:
A [slots, members * r_max, in] and B^T [slots, members * r_max, out] (B
block-diagonal over the members, pre-multiplied by the add-on's scaling);
slot 0 is all zeros and stands for the base model. Every token of a step
carries its request's slot id, and each group adds ``B[slot] A[slot] x`` to
its fused base output for that token's row only: one batch mixes rows of the
base and of any number of add-ons, and switching add-ons costs nothing (no
merge/unmerge of the base weights, which would be wrong for the other rows).

Slots are loaded lazily and evicted least-recently-used under a count
budget; a slot pinned by a running request is never evicted (its request
waits instead, see ``running_batch``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from firebox.inference.local.lora_files import AdapterSpec, load_adapter_weights
from firebox.inference.local.text_config import TextModelConfig

LORA_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "qkv": ("q_proj", "k_proj", "v_proj"),
        "o": ("o_proj",),
        "gate_up": ("gate_proj", "up_proj"),
        "down": ("down_proj",),
    }
)
_GROUP_OF: Mapping[str, tuple[str, int]] = MappingProxyType(
    {m: (g, i) for g, members in LORA_GROUPS.items() for i, m in enumerate(members)}
)
# Rough CPU/GPU cost model (microseconds) to choose between the two multi-slot strategies.
_FLOPS_PER_US = 4e4
_OP_US = 25.0


@dataclass(slots=True)
class GroupStack:
    a: torch.Tensor  # [slots, members * r_max, in]
    bt: torch.Tensor  # [slots, members * r_max, out]: B transposed, rank-major


class LoraSlots:
    """The loaded add-ons' weights and their slot bookkeeping. One owner thread."""

    def __init__(
        self, config: TextModelConfig, max_adapters: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self._config = config
        self._device = device
        self._dtype = dtype
        self.capacity = max_adapters
        self._rank = 0
        self._stacks: dict[tuple[int, str], GroupStack] = {}
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # adapter key -> slot, LRU first
        self._spec_in: dict[int, AdapterSpec] = {}
        self._pins = [0] * (max_adapters + 1)
        self.loads = 0

    def loaded(self) -> tuple[str, ...]:
        """Names of the add-ons in slots, least recently used first."""
        return tuple(self._spec_in[s].name for s in self._slot_of.values())

    def stack(self, layer: int, group: str) -> GroupStack | None:
        return self._stacks.get((layer, group))

    def acquire(self, spec: AdapterSpec) -> int | None:
        """Pin ``spec``'s slot, loading it (and evicting an unpinned LRU add-on) if needed.

        Returns None when every slot is pinned by running requests. Loading
        reads the add-on from disk on the calling (scheduler) thread.
        """
        slot = self._slot_of.get(spec.key)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return None
            self._load(spec, slot)
        self._slot_of.move_to_end(spec.key)
        self._pins[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        if slot:
            self._pins[slot] -= 1

    def _free_slot(self) -> int | None:
        used = set(self._slot_of.values())
        for slot in range(1, self.capacity + 1):
            if slot not in used:
                return slot
        for key, slot in self._slot_of.items():  # least recently used first
            if self._pins[slot] == 0:
                del self._slot_of[key]
                del self._spec_in[slot]
                for stack in self._stacks.values():
                    stack.a[slot].zero_()
                    stack.bt[slot].zero_()
                return slot
        return None

    def _load(self, spec: AdapterSpec, slot: int) -> None:
        try:
            self._write(spec, slot)
        except BaseException:
            # A half-written slot must not leak into the next add-on loaded there
            # (it copies only its own rows), nor stay pinned: the slot stays free.
            for stack in self._stacks.values():
                stack.a[slot].zero_()
                stack.bt[slot].zero_()
            raise
        self._slot_of[spec.key] = slot
        self._spec_in[slot] = spec
        self.loads += 1

    def _write(self, spec: AdapterSpec, slot: int) -> None:
        weights = load_adapter_weights(spec, self._config)
        rank = max(w.a.shape[0] for w in weights)
        if rank > self._rank:
            self._grow(rank)
        r_max = self._rank
        for w in weights:
            group, member = _GROUP_OF[w.module]
            stack = self._stacks.get((w.layer, group))
            if stack is None:
                stack = self._new_stack(group, r_max)
                self._stacks[(w.layer, group)] = stack
            r = w.a.shape[0]
            out_start = self._out_offset(group, member)
            rows = slice(member * r_max, member * r_max + r)
            stack.a[slot, rows].copy_(w.a)
            stack.bt[slot, rows, out_start : out_start + w.b.shape[0]].copy_(w.b.T)

    def _out_offset(self, group: str, member: int) -> int:
        return sum(self._config.module_shape(m)[1] for m in LORA_GROUPS[group][:member])

    def _new_stack(self, group: str, rank: int) -> GroupStack:
        members = LORA_GROUPS[group]
        fan_in = self._config.module_shape(members[0])[0]
        fan_out = sum(self._config.module_shape(m)[1] for m in members)
        slots, width = self.capacity + 1, len(members) * rank
        return GroupStack(
            a=torch.zeros((slots, width, fan_in), device=self._device, dtype=self._dtype),
            bt=torch.zeros((slots, width, fan_out), device=self._device, dtype=self._dtype),
        )

    def _grow(self, rank: int) -> None:
        """Re-pad every stack to a larger ``r_max`` (a loaded add-on of higher rank)."""
        old, self._rank = self._rank, rank
        for (layer, group), stack in self._stacks.items():
            grown = self._new_stack(group, rank)
            for member in range(len(LORA_GROUPS[group])):
                src, dst = (
                    slice(member * old, (member + 1) * old),
                    slice(member * rank, member * rank + old),
                )
                grown.a[:, dst].copy_(stack.a[:, src])
                grown.bt[:, dst].copy_(stack.bt[:, src])
            self._stacks[(layer, group)] = grown


class LoraBatch:
    """One step's per-token slot ids, and the LoRA delta computation over them."""

    def __init__(
        self, token_slots: list[int], slots: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        active = [i for i, s in enumerate(token_slots) if s]
        self.all_tokens = len(active) == len(token_slots)
        self._index = torch.tensor(active, dtype=torch.long, device=device)
        ids = [token_slots[i] for i in active]
        self._unique = sorted(set(ids))
        self._tokens = len(active)
        self._onehot: torch.Tensor | None = None
        self._segments: list[tuple[int, torch.Tensor]] = []
        if len(self._unique) > 1:
            onehot = torch.zeros((len(active), slots, 1), device=device, dtype=dtype)
            onehot[torch.arange(len(active), device=device), torch.tensor(ids, device=device)] = 1
            self._onehot = onehot
            for slot in self._unique:
                rows = [i for i in active if token_slots[i] == slot]
                self._segments.append((slot, torch.tensor(rows, dtype=torch.long, device=device)))

    @staticmethod
    def build(
        token_slots: list[int], slots: int, device: torch.device, dtype: torch.dtype
    ) -> LoraBatch | None:
        """None when no token of the step uses an add-on (the base-only fast path)."""
        return LoraBatch(token_slots, slots, device, dtype) if any(token_slots) else None

    def add(self, stack: GroupStack | None, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out[t] += B[slot_t] A[slot_t] x[t]`` for every LoRA token ``t``, in place.

        One add-on in the step: two small matmuls on its rows. Several: either
        one dense pass over every slot, masked to each token's own (few
        tokens: decode steps), or one pass per add-on over its rows (many
        tokens: prefill chunks), whichever the cost model finds cheaper.
        """
        if stack is None:
            return
        if self._onehot is not None and not self._dense_is_cheaper(stack, x, out):
            for slot, rows in self._segments:
                delta = (x.index_select(0, rows) @ stack.a[slot].T) @ stack.bt[slot]
                out.index_add_(0, rows, delta)
            return
        xs = x if self.all_tokens else x.index_select(0, self._index)
        if self._onehot is None:
            slot = self._unique[0]
            delta = (xs @ stack.a[slot].T) @ stack.bt[slot]
        else:
            slots, width, fan_in = stack.a.shape
            h = (xs @ stack.a.view(-1, fan_in).T).view(self._tokens, slots, width) * self._onehot
            delta = h.view(self._tokens, -1) @ stack.bt.view(slots * width, -1)
        if self.all_tokens:
            out.add_(delta)
        else:
            out.index_add_(0, self._index, delta)

    def _dense_is_cheaper(self, stack: GroupStack, x: torch.Tensor, out: torch.Tensor) -> bool:
        slots, width, _ = stack.a.shape
        per_slot = 2 * self._tokens * width * (x.shape[1] + out.shape[1]) / _FLOPS_PER_US
        dense = per_slot * slots
        segmented = len(self._unique) * 4 * _OP_US + per_slot
        return dense <= segmented
