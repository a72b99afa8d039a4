"""Checks of uploaded model files that read them without executing anything.

A LoRA add-on folder (``adapter_config.json`` + ``adapter_model.safetensors``)
must fit its base model; a base model folder (``config.json``, safetensors
shards, tokenizer files) must be one the engine it will run on can serve,
and its parameter count (from the safetensors headers) sets its price class.
Only JSON and safetensors *headers* are parsed: a safetensors file starts
with an 8-byte length and a JSON table of tensors, so no tensor is loaded
and no pickle is ever unpickled (pickle-based formats are refused by name).

Every problem names its file; the service reports them all at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox.catalog.safetensors_header import FLOATS, Tensor, read_safetensors_header
from firebox.inference.local.text_config import (
    SUPPORTED_ARCHITECTURES,
    TextModelConfig,
    UnsupportedModel,
    read_text_model_config,
)

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".md", ".jinja", ".tiktoken")
_LORA_KEY = re.compile(
    r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class UploadProblems(ValueError):
    """The uploaded files cannot be served; ``problems`` names each file and what is wrong.

    At most ``PER_FILE`` problems are kept per file (a wrong base shows in
    every layer), then one line says how many more there were.
    """

    PER_FILE = 4

    def __init__(self, problems: list[Problem]) -> None:
        kept: list[Problem] = []
        extra: dict[str, int] = {}
        for problem in problems:
            if sum(1 for p in kept if p.file == problem.file) < self.PER_FILE:
                kept.append(problem)
            else:
                extra[problem.file] = extra.get(problem.file, 0) + 1
        kept += [Problem(f, f"... and {n} more problems like these") for f, n in extra.items()]
        super().__init__("; ".join(str(p) for p in kept))
        self.problems = kept


@dataclass
class AdapterFacts:
    rank: int
    target_modules: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)


@dataclass
class BaseFacts:
    parameter_count: int
    moe: bool
    model_type: str
    context_length: int | None
    local: bool  # the in-process engine can run it
    warnings: list[str] = field(default_factory=list)


def file_name_problem(name: str) -> str | None:
    """Why ``name`` may not be uploaded, or None (pickle formats and code are refused)."""
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return (
            "pickle-based weights are refused (loading them can run code); convert them to "
            "safetensors (e.g. save_pretrained(..., safe_serialization=True)) and upload that"
        )
    if not lower.endswith(ALLOWED_SUFFIXES):
        return (
            "not a file a model folder needs; upload only "
            + ", ".join(ALLOWED_SUFFIXES)
            + " files (no code: remote code is never run)"
        )
    return None


def _json_object(folder: Path, name: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / name).read_text())
    except FileNotFoundError:
        problems.append(Problem(name, "missing: upload it with the other files"))
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(Problem(name, f"not valid JSON ({exc})"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(name, "not a JSON object"))
        return None
    return data


def _names(files: Iterable[str], problems: list[Problem]) -> None:
    for name in sorted(files):
        why = file_name_problem(name)
        if why is not None:
            problems.append(Problem(name, why))


def _targets(raw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The adapter's target modules (a regex is expanded over the Llama projections)."""
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        if targets == "all-linear":
            return list(LORA_MODULES), []
        return [t for t in LORA_MODULES if re.search(targets, t)], []
    names = [str(t) for t in targets]
    return [t for t in names if t in LORA_MODULES], [t for t in names if t not in LORA_MODULES]


def check_adapter(
    folder: Path,
    files: Iterable[str],
    *,
    declared_rank: int | None,
    declared_targets: Iterable[str],
    max_rank: int,
    base: TextModelConfig | None,
) -> AdapterFacts:
    """Check a PEFT LoRA folder against what was declared and, when known, its base's shapes."""
    problems: list[Problem] = []
    files = set(files)
    _names(files, problems)
    for required in ADAPTER_FILES:
        if required not in files:
            problems.append(Problem(required, "missing: a PEFT LoRA add-on needs it"))
    if problems:
        raise UploadProblems(problems)
    raw = _json_object(folder, "adapter_config.json", problems) or {}
    rank = _check_adapter_config(raw, declared_rank, declared_targets, max_rank, problems)
    targets, _ = _targets(raw)
    try:
        tensors = read_safetensors_header(folder / "adapter_model.safetensors")
    except (OSError, ValueError) as exc:
        problems.append(Problem("adapter_model.safetensors", str(exc)))
        tensors = {}
    if tensors:
        _check_lora_tensors(tensors, rank, set(targets), max_rank, base, problems)
    if problems:
        raise UploadProblems(problems)
    warnings = []
    if base is None:
        warnings.append(
            "The base model is served by an upstream engine, so the adapter's tensor shapes "
            "were not checked against it here."
        )
    return AdapterFacts(rank=rank, target_modules=tuple(sorted(targets)), warnings=warnings)


def _check_adapter_config(
    raw: dict[str, Any],
    declared_rank: int | None,
    declared_targets: Iterable[str],
    max_rank: int,
    problems: list[Problem],
) -> int:
    name = "adapter_config.json"
    if not raw:
        return 0
    if str(raw.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(Problem(name, f"peft_type is {raw.get('peft_type')!r}; only LORA"))
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "trained LoRA biases")):
        if raw.get(flag):
            problems.append(Problem(name, f"{flag} is set: {what} is not supported"))
    if raw.get("bias", "none") != "none":
        problems.append(Problem(name, f"bias is {raw['bias']!r}; only 'none' is supported"))
    if raw.get("modules_to_save"):
        problems.append(Problem(name, "modules_to_save is set: only LoRA weights are served"))
    if raw.get("fan_in_fan_out"):
        problems.append(Problem(name, "fan_in_fan_out is set (Conv1D bases are not served)"))
    rank = raw.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(Problem(name, f"r is {rank!r}; it must be a positive integer"))
        return 0
    if rank > max_rank:
        problems.append(
            Problem(name, f"r is {rank}, above the largest rank allowed here ({max_rank})")
        )
    if declared_rank is not None and rank != declared_rank:
        problems.append(
            Problem(
                name,
                f"r is {rank} but the model was created with peftDetails.r = {declared_rank}; "
                "create the model with the adapter's rank",
            )
        )
    targets, unknown = _targets(raw)
    if unknown:
        problems.append(
            Problem(name, f"target_modules {unknown} are not among {list(LORA_MODULES)}")
        )
    if not targets:
        problems.append(Problem(name, "target_modules names no attention or MLP projection"))
    declared = sorted(set(declared_targets))
    if declared and targets and sorted(set(targets)) != declared:
        problems.append(
            Problem(
                name,
                f"target_modules are {sorted(set(targets))} but the model was created with "
                f"peftDetails.targetModules = {declared}",
            )
        )
    return rank


def _check_lora_tensors(
    tensors: Mapping[str, Tensor],
    rank: int,
    targets: set[str],
    max_rank: int,
    base: TextModelConfig | None,
    problems: list[Problem],
) -> None:
    name = "adapter_model.safetensors"
    pairs: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in sorted(tensors.items()):
        found = _LORA_KEY.search(key)
        if found is None:
            problems.append(Problem(name, f"{key!r} is not a LoRA A/B weight of a layer"))
            continue
        if tensor.dtype not in FLOATS or len(tensor.shape) != 2:
            problems.append(Problem(name, f"{key!r} is not a 2-D float tensor"))
            continue
        layer, module, which = int(found.group(1)), found.group(2), found.group(3)
        if module not in LORA_MODULES or (targets and module not in targets):
            problems.append(Problem(name, f"{key!r} targets {module}, not in target_modules"))
            continue
        pairs.setdefault((layer, module), {})[which] = tensor
    if not pairs and not problems:
        problems.append(Problem(name, "holds no LoRA weights"))
    for (layer, module), pair in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(pair) != {"A", "B"}:
            problems.append(Problem(name, f"{where}: lora_A and lora_B must come in pairs"))
            continue
        a, b = pair["A"].shape, pair["B"].shape
        if a[0] != b[1] or a[0] > max_rank:
            problems.append(Problem(name, f"{where}: A {a} and B {b} do not share a rank"))
            continue
        if rank and a[0] != rank:
            problems.append(Problem(name, f"{where}: rank {a[0]}, but adapter_config r={rank}"))
        if base is None:
            continue
        if layer >= base.num_layers:
            problems.append(
                Problem(name, f"{where}: the base model has only {base.num_layers} layers")
            )
            continue
        fan_in, fan_out = base.module_shape(module)
        if a[1] != fan_in or b[0] != fan_out:
            problems.append(
                Problem(
                    name,
                    f"{where}: A {a}, B {b} do not fit the base model (hidden size "
                    f"{base.hidden_size}): expected A ({a[0]}, {fan_in}) and B ({fan_out}, "
                    f"{a[0]}); was it trained on another base?",
                )
            )


def check_base_model(folder: Path, files: Iterable[str], *, upstream_bound: bool) -> BaseFacts:
    """Check a Hugging Face model folder; its parameter count comes from the weight headers."""
    problems: list[Problem] = []
    files = set(files)
    _names(files, problems)
    if "config.json" not in files:
        problems.append(Problem("config.json", "missing: a model folder needs it"))
    if not any(t in files for t in TOKENIZER_FILES):
        problems.append(
            Problem("tokenizer.json", "missing: upload tokenizer.json (or tokenizer.model)")
        )
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    if not shards:
        problems.append(Problem("model.safetensors", "missing: no safetensors weights"))
    if problems:
        raise UploadProblems(problems)
    raw = _json_object(folder, "config.json", problems) or {}
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        try:
            tensors.update(read_safetensors_header(folder / shard))
        except (OSError, ValueError) as exc:
            problems.append(Problem(shard, str(exc)))
    _check_index(folder, files, tensors, problems)
    config: TextModelConfig | None = None
    local = False
    if raw and not upstream_bound:
        try:
            config = read_text_model_config(folder)
            local = True
        except (UnsupportedModel, KeyError, TypeError, ValueError) as exc:
            problems.append(
                Problem(
                    "config.json",
                    f"{_config_error(exc)}. Supported here: {', '.join(SUPPORTED_ARCHITECTURES)}"
                    " on the local engine; any other architecture needs the operator to bind "
                    "the model to an upstream engine before it is validated",
                )
            )
    if config is not None and tensors:
        _check_base_tensors(config, tensors, problems)
    if problems:
        raise UploadProblems(problems)
    moe = any(k in raw for k in ("num_local_experts", "num_experts", "n_routed_experts"))
    context = raw.get("max_position_embeddings")
    return BaseFacts(
        parameter_count=sum(t.numel for t in tensors.values()),
        moe=moe,
        model_type=str(raw.get("model_type") or "")[:64],
        context_length=context if isinstance(context, int) and context > 0 else None,
        local=local,
    )


def _config_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"config.json lacks {exc.args[0]!r}"
    return str(exc).rstrip(".")


def _check_index(
    folder: Path, files: set[str], tensors: Mapping[str, Tensor], problems: list[Problem]
) -> None:
    index_name = "model.safetensors.index.json"
    if index_name not in files:
        return
    raw = _json_object(folder, index_name, problems)
    weight_map = raw.get("weight_map") if raw else None
    if not isinstance(weight_map, dict):
        problems.append(Problem(index_name, "has no weight_map"))
        return
    for shard in sorted({str(v) for v in weight_map.values()}):
        if shard not in files:
            problems.append(Problem(index_name, f"names {shard!r}, which was not uploaded"))
    missing = [k for k in weight_map if k not in tensors]
    if missing:
        problems.append(Problem(index_name, f"lists {missing[0]!r}, which no shard holds"))


def _check_base_tensors(
    config: TextModelConfig, tensors: Mapping[str, Tensor], problems: list[Problem]
) -> None:
    """The tensors the local engine reads exist with the shapes config.json implies."""
    expected = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size)}
    for layer in range(config.num_layers):
        for module in ("q_proj", "k_proj", "v_proj", "o_proj"):
            fan_in, fan_out = config.module_shape(module)
            expected[f"model.layers.{layer}.self_attn.{module}.weight"] = (fan_out, fan_in)
        for module in ("gate_proj", "up_proj", "down_proj"):
            fan_in, fan_out = config.module_shape(module)
            expected[f"model.layers.{layer}.mlp.{module}.weight"] = (fan_out, fan_in)
    for key, shape in expected.items():
        tensor = tensors.get(key) or tensors.get(key.removeprefix("model."))
        if tensor is None:
            problems.append(Problem("model.safetensors", f"lacks {key!r}, which config implies"))
            return
        if tensor.shape != shape:
            problems.append(
                Problem(
                    "model.safetensors",
                    f"{key!r} has shape {tensor.shape}; config.json implies {shape}",
                )
            )
            return
