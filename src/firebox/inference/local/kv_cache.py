"""The paged KV cache: preallocated block tensors, block refcounts, and the prefix cache.

Memory for keys and values is allocated once, at load, as fixed-size blocks
(``block_size`` tokens each); a sequence owns a list of block ids (its block
table) instead of a contiguous buffer, so sequences grow one block at a time,
never fragment memory, and can share blocks: the full blocks of a prompt are
shared by the ``n`` choices of a request, and kept after the request ends in
the prefix cache so that a later prompt with the same prefix skips their
computation.

A block's identity in the prefix cache is a hash chained over (parent hash,
the block's token ids, the adapter), so a block matches only if everything
before it matches too, and an add-on's keys (which its LoRA changes) are never
served to the base model or to another add-on. Unreferenced cached blocks are
evicted least-recently-used, only when a new block is needed and no never-used
block is left.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def block_hashes(tokens: Sequence[int], block_size: int, adapter_key: str) -> list[bytes]:
    """The chained hash of each full block of ``tokens`` (a trailing partial block has none)."""
    hashes: list[bytes] = []
    parent = b""
    salt = adapter_key.encode()
    for start in range(0, len(tokens) - block_size + 1, block_size):
        digest = hashlib.sha256(parent)
        digest.update(array("q", tokens[start : start + block_size]).tobytes())
        digest.update(salt)
        parent = digest.digest()
        hashes.append(parent)
    return hashes


class KVCache:
    """Keys and values of all layers: [layers, 2, blocks, block_size, kv_heads, head_dim]."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.data = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim),
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return (
            2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        )

    def keys(self, layer: int) -> torch.Tensor:
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.data[layer, 1]

    def write(
        self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Store new tokens' keys/values [tokens, kv_heads, head_dim] at flat slot indices."""
        k = self.data[layer, 0].view(-1, keys.shape[1], keys.shape[2])
        v = self.data[layer, 1].view(-1, values.shape[1], values.shape[2])
        k.index_copy_(0, slots, keys)
        v.index_copy_(0, slots, values)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy a block in every layer (a choice taking its own copy of a partial prompt block)."""
        self.data[:, :, dst].copy_(self.data[:, :, src])


@dataclass(frozen=True, slots=True)
class PoolStats:
    total: int
    used: int  # referenced by a running sequence
    free: int  # never used, or evicted
    cached: int  # unreferenced, kept for prefix reuse (evictable)


class BlockPool:
    """Block ids with refcounts, and the prefix cache over them. Not thread-safe: one owner."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first

    def available(self) -> int:
        """Blocks an allocation may take now: free ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks (refcount 1), evicting LRU cached ones if needed, or None."""
        if count > self.available():
            return None
        blocks = []
        for _ in range(count):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """Take a reference on the cached blocks of the longest cached prefix of ``hashes``."""
        blocks = []
        for digest in hashes:
            block = self._block_of.get(digest)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            blocks.append(block)
        return blocks

    def share(self, blocks: Sequence[int]) -> None:
        """One more reference on each block (a forked choice sharing its prompt)."""
        for block in blocks:
            self._refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block; unreferenced blocks become cached or free."""
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None  # most recently used goes last
                else:
                    self._free.append(block)

    def register(self, block: int, digest: bytes) -> None:
        """Publish a computed full block under its prefix hash (first writer wins)."""
        if digest in self._block_of or block in self._hash_of:
            return
        self._block_of[digest] = block
        self._hash_of[block] = digest

    def stats(self) -> PoolStats:
        used = self.num_blocks - len(self._free) - len(self._evictable)
        return PoolStats(
            total=self.num_blocks, used=used, free=len(self._free), cached=len(self._evictable)
        )
