"""PEFT LoRA add-on folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

Checked when an add-on is registered (its config) and when it is loaded into a
slot (its tensors), against the base model's shapes, so that a mismatched
add-on fails with a message naming the problem instead of producing garbage.
Only plain LoRA on the attention and MLP projections is accepted; variants
that change the computation (DoRA, embedding or lm_head targets, trained
biases, modules_to_save) are refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from firebox.inference.local.text_config import TextModelConfig

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class AdapterError(ValueError):
    """The folder is not a LoRA add-on this engine can apply to its base model."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A registered add-on: its name, its folder, and a unique key for the prefix cache."""

    name: str
    path: Path
    key: str  # differs between two registrations of different folders under one name
    rank: int
    alpha: float
    use_rslora: bool
    alpha_pattern: tuple[tuple[str, float], ...]

    def scaling(self, module_path: str, rank: int) -> float:
        """PEFT's ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), honouring ``alpha_pattern``."""
        alpha = self.alpha
        for pattern, value in self.alpha_pattern:
            if re.search(rf"(^|\.){pattern}$", module_path):
                alpha = value
                break
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


@dataclass(frozen=True, slots=True)
class AdapterWeights:
    """One module's A [r, in] and B [out, r], B already multiplied by the scaling."""

    layer: int
    module: str
    a: torch.Tensor
    b: torch.Tensor


def read_adapter_spec(name: str, path: str | Path, key: str) -> AdapterSpec:
    """Check ``adapter_config.json`` and that the weights file exists; no tensor is read."""
    folder = Path(path).expanduser()
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(
            f"{folder} holds no adapter_config.json; it is not a PEFT add-on folder."
        )
    if not (folder / "adapter_model.safetensors").is_file():
        raise AdapterError(
            f"{folder} holds no adapter_model.safetensors (the engine reads only safetensors)."
        )
    raw: dict[str, Any] = json.loads(config_file.read_text())
    if str(raw.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"Add-on {name!r} is a {raw.get('peft_type')} adapter, not LoRA.")
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "trained LoRA biases")):
        if raw.get(flag):
            raise AdapterError(
                f"Add-on {name!r} uses {what}, which the local engine does not apply."
            )
    if raw.get("bias", "none") != "none":
        raise AdapterError(
            f"Add-on {name!r} trains biases (bias={raw['bias']!r}); only bias='none' is supported."
        )
    if raw.get("modules_to_save"):
        raise AdapterError(
            f"Add-on {name!r} saves whole modules {raw['modules_to_save']}; "
            "only LoRA weights are supported."
        )
    if raw.get("fan_in_fan_out"):
        raise AdapterError(
            f"Add-on {name!r} uses fan_in_fan_out (Conv1D bases); Llama bases use Linear."
        )
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        targets = [t for t in LORA_MODULES if re.search(targets, t)]
    unknown = [t for t in targets if t not in LORA_MODULES]
    if unknown:
        raise AdapterError(
            f"Add-on {name!r} targets {unknown}; the local engine applies LoRA to "
            f"{list(LORA_MODULES)} only."
        )
    return AdapterSpec(
        name=name,
        path=folder,
        key=key,
        rank=int(raw.get("r", 8)),
        alpha=float(raw.get("lora_alpha", 8)),
        use_rslora=bool(raw.get("use_rslora", False)),
        alpha_pattern=tuple(
            (str(k), float(v)) for k, v in (raw.get("alpha_pattern") or {}).items()
        ),
    )


def load_adapter_weights(spec: AdapterSpec, config: TextModelConfig) -> list[AdapterWeights]:
    """The add-on's per-module A/B pairs, checked against the base model (CPU, float32)."""
    tensors = load_file(str(spec.path / "adapter_model.safetensors"), device="cpu")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        found = _KEY.search(key)
        if found is None:
            raise AdapterError(
                f"Add-on {spec.name!r} holds {key!r}, which is not a LoRA A/B weight of a layer."
            )
        layer, module, which = int(found.group(1)), found.group(2), found.group(3)
        if module not in LORA_MODULES or layer >= config.num_layers:
            raise AdapterError(
                f"Add-on {spec.name!r} holds {key!r}, which the base model has no place for."
            )
        pairs.setdefault((layer, module), {})[which] = tensor
    out = []
    for (layer, module), pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(
                f"Add-on {spec.name!r} has an unpaired LoRA weight at layer {layer} {module}."
            )
        a, b = pair["A"].float(), pair["B"].float()
        fan_in, fan_out = config.module_shape(module)
        rank = a.shape[0]
        if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise AdapterError(
                f"Add-on {spec.name!r} does not fit its base at layer {layer} {module}: "
                f"A {tuple(a.shape)}, B {tuple(b.shape)}, expected ({rank}, {fan_in}) "
                f"and ({fan_out}, {rank})."
            )
        block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        module_path = f"model.layers.{layer}.{block}.{module}"
        out.append(AdapterWeights(layer, module, a, b * spec.scaling(module_path, rank)))
    if not out:
        raise AdapterError(f"Add-on {spec.name!r} holds no LoRA weights.")
    return out
