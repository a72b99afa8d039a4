"""What a Hugging Face Llama-family folder says about its model, checked before any weight loads.

The local text engine runs one architecture family with its own forward pass
(so that attention can read a paged KV cache): Llama, Mistral and Qwen2
checkpoints. Anything else is refused here, at load, with a message that
points to the upstream engine, instead of failing mid-request or, worse,
computing plausible garbage with a layer it does not implement (a sliding
window, a rope variant, another activation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

SUPPORTED_ARCHITECTURES: Mapping[str, str] = MappingProxyType(
    {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
)
UPSTREAM_HINT = (
    "Serve it with an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp or Ollama) "
    "and bind the model to the upstream engine instead of the local one."
)

RopeKind = Literal["default", "linear", "llama3"]


class UnsupportedModel(ValueError):
    """The folder holds a model the local text engine cannot run (or no model at all)."""


@dataclass(frozen=True, slots=True)
class RopeSpec:
    """Rotary embedding parameters: ``rope_theta`` and a supported ``rope_scaling``."""

    theta: float = 10000.0
    kind: RopeKind = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclass(frozen=True, slots=True)
class TextModelConfig:
    """The shapes and constants the forward pass needs, read from ``config.json``."""

    path: Path
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    tie_embeddings: bool
    rope: RopeSpec
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str | None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def module_shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one projection, by its HF name (``q_proj``...)."""
        shapes = {
            "q_proj": (self.hidden_size, self.q_size),
            "k_proj": (self.hidden_size, self.kv_size),
            "v_proj": (self.hidden_size, self.kv_size),
            "o_proj": (self.q_size, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }
        return shapes[module]


def _refuse(path: Path, why: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"The local text engine cannot run the model in {path}: {why}. " + UPSTREAM_HINT
    )


def _read_json(file: Path) -> dict[str, Any]:
    data = json.loads(file.read_text())
    if not isinstance(data, dict):
        raise UnsupportedModel(f"{file} is not a JSON object.")
    return data


def _rope(path: Path, raw: dict[str, Any]) -> RopeSpec:
    """Both spellings: 5.x's ``rope_parameters``; 4.x's ``rope_theta`` and ``rope_scaling``."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta") or raw.get("rope_theta") or 10000.0)
    kind = str(params.get("rope_type") or params.get("type") or "default")
    if float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))) != 1.0:
        raise _refuse(path, "partial rotary embeddings are not supported")
    if kind == "default":
        return RopeSpec(theta=theta)
    if kind == "linear":
        return RopeSpec(theta=theta, kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeSpec(
            theta=theta,
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params["original_max_position_embeddings"]),
        )
    raise _refuse(path, f"rope scaling {kind!r} is not supported (only default, linear, llama3)")


def _eos_ids(path: Path, raw: dict[str, Any]) -> tuple[int, ...]:
    """End-of-sequence ids as ``generate`` uses them: generation_config.json, else config.json."""
    value: Any = raw.get("eos_token_id")
    generation = path / "generation_config.json"
    if generation.is_file():
        value = _read_json(generation).get("eos_token_id", value)
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _check_architecture(path: Path, raw: dict[str, Any], max_positions: int) -> str:
    model_type = str(raw.get("model_type", ""))
    architectures = list(raw.get("architectures") or [])
    if model_type not in SUPPORTED_ARCHITECTURES:
        named = architectures[0] if architectures else model_type or "unknown"
        raise _refuse(
            path,
            f"architecture {named!r} is not one of Llama, Mistral or Qwen2",
        )
    allowed = set(SUPPORTED_ARCHITECTURES.values())
    others = [a for a in architectures if a not in allowed]
    if others:
        raise _refuse(
            path, f"architecture {others[0]!r} is not a causal LM of Llama, Mistral or Qwen2"
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise _refuse(path, f"activation {raw.get('hidden_act')!r} is not SiLU")
    window = raw.get("sliding_window")
    windowed = model_type == "mistral" or bool(raw.get("use_sliding_window"))
    if windowed and window is not None and int(window) < max_positions:
        raise _refuse(
            path,
            f"it uses sliding-window attention ({window} tokens, less than its "
            f"{max_positions}-token context), which this engine does not implement",
        )
    return model_type


def read_text_model_config(path: str | Path) -> TextModelConfig:
    """Parse and check ``path/config.json``; raise ``UnsupportedModel`` for anything unrunnable."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UnsupportedModel(
            f"{folder} holds no config.json; it is not a Hugging Face model folder."
        )
    raw = _read_json(config_file)
    max_positions = int(raw.get("max_position_embeddings") or 2048)
    model_type = _check_architecture(folder, raw, max_positions)
    hidden = int(raw["hidden_size"])
    heads = int(raw["num_attention_heads"])
    head_dim = int(raw.get("head_dim") or hidden // heads)
    bos = raw.get("bos_token_id")
    return TextModelConfig(
        path=folder,
        model_type=model_type,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_positions=max_positions,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope=_rope(folder, raw),
        eos_token_ids=_eos_ids(folder, raw),
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
    )
