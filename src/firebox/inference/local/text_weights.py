"""The weights of a Llama-family checkpoint, read from safetensors under their HF names.

Projections that read the same input are fused at load (q/k/v into one
matrix, gate/up into another) so each layer runs two large matrix products
instead of five small ones; LoRA deltas are added to the fused output's
slices, so add-ons still address ``q_proj``, ``gate_proj``... by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from firebox.inference.local.text_config import TextModelConfig, UnsupportedModel


@dataclass(slots=True)
class LayerWeights:
    """One decoder layer; biases are None where the checkpoint has none (Qwen2 has q/k/v ones)."""

    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UnsupportedModel(
            f"{folder} holds no .safetensors weights; the local text engine reads only safetensors."
        )
    return files


class _TensorSource:
    """Every tensor of the checkpoint by name, cast and moved as it is read."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self._where: dict[str, Any] = {}  # name -> the open safetensors handle holding it
        for file in _weight_files(folder):
            handle = safe_open(str(file), framework="pt", device="cpu")
            for name in handle.keys():  # type: ignore[no-untyped-call]  # noqa: SIM118
                self._where[name] = handle
        self._device = device
        self._dtype = dtype
        prefixed = any(n.startswith("model.") for n in self._where)
        self._prefix = "model." if prefixed else ""

    def has(self, name: str) -> bool:
        return self._prefix + name in self._where or name in self._where

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        full = self._prefix + name if self._prefix + name in self._where else name
        if full not in self._where:
            raise UnsupportedModel(f"The checkpoint lacks the tensor {full!r}.")
        tensor: torch.Tensor = self._where[full].get_tensor(full)
        if shape is not None and tuple(tensor.shape) != shape:
            raise UnsupportedModel(
                f"Tensor {full!r} has shape {tuple(tensor.shape)}, config.json implies {shape}."
            )
        return tensor.to(device=self._device, dtype=self._dtype)

    def optional(self, name: str) -> torch.Tensor | None:
        return self.get(name) if self.has(name) else None


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise UnsupportedModel("Only some of the fused projections carry a bias.")
    return torch.cat(present, dim=0)


def load_weights(config: TextModelConfig, device: torch.device, dtype: torch.dtype) -> ModelWeights:
    """Read, check and fuse every tensor the forward pass uses."""
    src = _TensorSource(config.path, device, dtype)
    hidden, inter = config.hidden_size, config.intermediate_size
    layers = []
    for i in range(config.num_layers):
        attn, mlp = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        qkv = torch.cat(
            [
                src.get(attn + "q_proj.weight", (config.q_size, hidden)),
                src.get(attn + "k_proj.weight", (config.kv_size, hidden)),
                src.get(attn + "v_proj.weight", (config.kv_size, hidden)),
            ]
        )
        qkv_bias = _cat([src.optional(attn + f"{m}_proj.bias") for m in ("q", "k", "v")])
        gate_up = torch.cat(
            [
                src.get(mlp + "gate_proj.weight", (inter, hidden)),
                src.get(mlp + "up_proj.weight", (inter, hidden)),
            ]
        )
        gate_up_bias = _cat(
            [src.optional(mlp + "gate_proj.bias"), src.optional(mlp + "up_proj.bias")]
        )
        layers.append(
            LayerWeights(
                input_norm=src.get(f"layers.{i}.input_layernorm.weight", (hidden,)),
                qkv=qkv,
                qkv_bias=qkv_bias,
                o=src.get(attn + "o_proj.weight", (hidden, config.q_size)),
                o_bias=src.optional(attn + "o_proj.bias"),
                post_norm=src.get(f"layers.{i}.post_attention_layernorm.weight", (hidden,)),
                gate_up=gate_up,
                gate_up_bias=gate_up_bias,
                down=src.get(mlp + "down_proj.weight", (hidden, inter)),
                down_bias=src.optional(mlp + "down_proj.bias"),
            )
        )
    embed = src.get("embed_tokens.weight", (config.vocab_size, hidden))
    if config.tie_embeddings or not src.has("lm_head.weight"):
        lm_head = embed
    else:
        lm_head = src.get("lm_head.weight", (config.vocab_size, hidden))
    return ModelWeights(
        embed=embed, layers=layers, norm=src.get("norm.weight", (hidden,)), lm_head=lm_head
    )
