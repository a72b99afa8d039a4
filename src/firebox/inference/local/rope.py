"""Rotary position embeddings, computed exactly as transformers computes them.

The engine's outputs are checked token for token against transformers'
reference model in float32, so the inverse frequencies (including llama3's
smoothed scaling) and the cos/sin tables follow the same float32 arithmetic
in the same order. Tables are computed per step from the tokens' positions
instead of precomputed for the whole context, which would cost hundreds of MB
for 128k-position models.
"""

from __future__ import annotations

import math

import torch

from firebox.inference.local.text_config import RopeSpec


def inverse_frequencies(rope: RopeSpec, head_dim: int) -> torch.Tensor:
    """float32 inverse frequencies of the ``head_dim // 2`` rotary pairs."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        low_freq_wavelen = rope.original_max_positions / rope.low_freq_factor
        high_freq_wavelen = rope.original_max_positions / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class Rotary:
    """cos/sin of each token's position, and their application to queries and keys."""

    def __init__(self, rope: RopeSpec, head_dim: int, device: torch.device) -> None:
        self._inv_freq = inverse_frequencies(rope, head_dim).to(device)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables of shape [tokens, 1, head_dim], broadcast over heads."""
        freqs = positions[:, None].float() * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [tokens, heads, head_dim] by the tables (transformers' ``rotate_half`` form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)
