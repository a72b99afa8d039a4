"""The Llama-family forward pass over a paged KV cache.

transformers' own modeling code expects a contiguous cache per sequence; this
one reads and writes keys/values through block tables, so sequences of any
length share one preallocated pool and join or leave the batch at any step.
The arithmetic mirrors transformers' LlamaForCausalLM (RMSNorm in float32,
the same rotary tables, SwiGLU, GQA, scaled dot-product attention) so that
float32 outputs match the reference token for token; Mistral and Qwen2 (q/k/v
biases) are the same graph. Logits are computed only for the positions the
scheduler asks for (the last token of a sequence, or every prompt position
when echoed logprobs are wanted): the vocabulary projection is the largest
matrix of a small model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from firebox.inference.local.kv_cache import KVCache
from firebox.inference.local.lora_slots import LoraSlots
from firebox.inference.local.rope import Rotary, apply_rotary
from firebox.inference.local.step_batch import StepBatch
from firebox.inference.local.text_config import TextModelConfig
from firebox.inference.local.text_weights import LayerWeights, ModelWeights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalize in float32, scale in the model dtype."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class TextModel:
    """Runs steps of a ``StepBatch`` against the weights, the KV cache and the LoRA slots."""

    def __init__(
        self,
        config: TextModelConfig,
        weights: ModelWeights,
        cache: KVCache,
        lora: LoraSlots,
        device: torch.device,
    ) -> None:
        self.config = config
        self._w = weights
        self._cache = cache
        self._lora = lora
        self._device = device
        self._dtype = weights.embed.dtype
        self._rotary = Rotary(config.rope, config.head_dim, device)
        self._scale = config.head_dim**-0.5
        self._gqa = config.num_heads != config.num_kv_heads

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Float32 logits [rows, vocab] of ``batch.logit_rows``; writes the new tokens' KV."""
        h = F.embedding(batch.input_ids, self._w.embed)
        cos, sin = self._rotary.cos_sin(batch.positions, self._dtype)
        for index, layer in enumerate(self._w.layers):
            h = self._layer(index, layer, h, cos, sin, batch)
        h = h.index_select(0, batch.logit_rows)
        h = rms_norm(h, self._w.norm, self.config.rms_norm_eps)
        return F.linear(h, self._w.lm_head).float()

    def _layer(
        self,
        index: int,
        layer: LayerWeights,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: StepBatch,
    ) -> torch.Tensor:
        cfg = self.config
        tokens = h.shape[0]
        lora = batch.lora
        x = rms_norm(h, layer.input_norm, cfg.rms_norm_eps)
        qkv = F.linear(x, layer.qkv, layer.qkv_bias)
        q_end, k_end = cfg.q_size, cfg.q_size + cfg.kv_size
        if lora is not None:
            lora.add(self._lora.stack(index, "qkv"), x, qkv)
        q = apply_rotary(qkv[:, :q_end].view(tokens, cfg.num_heads, cfg.head_dim), cos, sin)
        k = apply_rotary(qkv[:, q_end:k_end].view(tokens, cfg.num_kv_heads, cfg.head_dim), cos, sin)
        v = qkv[:, k_end:].reshape(tokens, cfg.num_kv_heads, cfg.head_dim)
        self._cache.write(index, batch.slots, k, v)
        attn = self._attention(index, q, batch)
        o = F.linear(attn, layer.o, layer.o_bias)
        if lora is not None:
            lora.add(self._lora.stack(index, "o"), attn, o)
        h = h + o
        x = rms_norm(h, layer.post_norm, cfg.rms_norm_eps)
        gate_up = F.linear(x, layer.gate_up, layer.gate_up_bias)
        inter = cfg.intermediate_size
        if lora is not None:
            lora.add(self._lora.stack(index, "gate_up"), x, gate_up)
        m = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        down = F.linear(m, layer.down, layer.down_bias)
        if lora is not None:
            lora.add(self._lora.stack(index, "down"), m, down)
        return h + down

    def _attention(self, layer: int, q: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        """Attention output [tokens, heads * head_dim] of every new token over its sequence."""
        cfg = self.config
        out = torch.empty_like(q)
        # one row per block: gathering whole blocks with index_select is a row memcpy
        keys = self._cache.keys(layer).view(self._cache.num_blocks, -1)
        values = self._cache.values(layer).view(self._cache.num_blocks, -1)
        for group in batch.decodes:
            seqs = group.tables.shape[0]
            flat = group.tables.view(-1)
            # [S * blocks, block * kv * d] -> [S, kv, blocks * block, d]
            k = keys.index_select(0, flat).view(seqs, -1, cfg.num_kv_heads, cfg.head_dim)
            v = values.index_select(0, flat).view(seqs, -1, cfg.num_kv_heads, cfg.head_dim)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            qd = q.index_select(0, group.rows).unsqueeze(2)  # [S, heads, 1, d]
            o = F.scaled_dot_product_attention(
                qd, k, v, attn_mask=group.mask, scale=self._scale, enable_gqa=self._gqa
            )
            out.index_copy_(0, group.rows, o.squeeze(2))
        for span in batch.prefills:
            k = keys.index_select(0, span.table).view(-1, cfg.num_kv_heads, cfg.head_dim)
            v = values.index_select(0, span.table).view(-1, cfg.num_kv_heads, cfg.head_dim)
            k, v = k[: span.context], v[: span.context]
            qs = q[span.start : span.start + span.length].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                qs,
                k.transpose(0, 1).unsqueeze(0),
                v.transpose(0, 1).unsqueeze(0),
                attn_mask=span.mask,
                is_causal=span.mask is None,
                scale=self._scale,
                enable_gqa=self._gqa,
            )
            out[span.start : span.start + span.length] = o.squeeze(0).transpose(0, 1)
        return out.view(q.shape[0], -1)
