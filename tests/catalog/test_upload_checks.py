"""The checks of uploaded folders, on files written here: headers only, nothing executed."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from firebox.catalog.safetensors_header import read_safetensors_header
from firebox.catalog.upload_checks import (
    UploadProblems,
    check_adapter,
    check_base_model,
    file_name_problem,
)
from firebox.inference.local.text_config import read_text_model_config

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY = MODELS / "firebox-tiny"
LORA = MODELS / "firebox-tiny-lora"


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file of zero-filled tensors (dtype, shape)."""
    width = {"F32": 4, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = width[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


def problems(exc: pytest.ExceptionInfo[UploadProblems]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_headers_are_read_and_checked_against_the_file(tmp_path: Path) -> None:
    good = tmp_path / "w.safetensors"
    write_safetensors(good, {"a": ("F32", [2, 3]), "b": ("F16", [4])})
    header = read_safetensors_header(good)
    assert {k: (t.dtype, t.shape, t.numel) for k, t in header.items()} == {
        "a": ("F32", (2, 3), 6),
        "b": ("F16", (4,), 4),
    }
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_safetensors_header(truncated)
    pickle = tmp_path / "p.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + bytes(64))  # a pickle renamed: not a header
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors_header(pickle)


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("adapter_model.bin", True),
        ("pytorch_model.pt", True),
        ("optimizer.pkl", True),
        ("modeling_custom.py", True),
        ("weights.gguf", True),
        ("model-00001-of-00002.safetensors", False),
        ("tokenizer.model", False),
        ("README.md", False),
    ],
)
def test_file_names(name: str, refused: bool) -> None:
    assert (file_name_problem(name) is not None) is refused


def test_the_bundled_adapter_fits_its_base_and_a_rank_above_the_bound_does_not() -> None:
    base = read_text_model_config(TINY)
    facts = check_adapter(
        LORA, files(LORA), declared_rank=8, declared_targets=[], max_rank=64, base=base
    )
    assert (facts.rank, len(facts.target_modules), facts.warnings) == (8, 7, [])
    with pytest.raises(UploadProblems) as bound:
        check_adapter(
            LORA, files(LORA), declared_rank=8, declared_targets=[], max_rank=4, base=base
        )
    assert "adapter_config.json: r is 8, above the largest rank allowed here (4)" in problems(bound)


def test_an_adapter_for_a_deeper_base_names_the_layer(tmp_path: Path) -> None:
    folder = tmp_path / "deep"
    folder.mkdir()
    shutil.copy(LORA / "adapter_config.json", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(r=4, target_modules=["q_proj"])
    (folder / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.7.self_attn.q_proj"
    write_safetensors(
        folder / "adapter_model.safetensors",
        {
            f"{prefix}.lora_A.weight": ("F32", [4, 256]),
            f"{prefix}.lora_B.weight": ("F32", [256, 4]),
        },
    )
    with pytest.raises(UploadProblems) as deep:
        check_adapter(
            folder,
            files(folder),
            declared_rank=4,
            declared_targets=["q_proj"],
            max_rank=64,
            base=read_text_model_config(TINY),
        )
    assert problems(deep) == [
        "adapter_model.safetensors: layer 7 q_proj: the base model has only 4 layers"
    ]


def test_a_sharded_base_counts_every_shard_and_its_index_must_match(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(TINY, folder)
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(num_hidden_layers=0, vocab_size=8, hidden_size=4, num_attention_heads=1)
    config.update(num_key_value_heads=1, intermediate_size=8, head_dim=4)
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(
        folder / "model-1.safetensors", {"model.embed_tokens.weight": ("F32", [8, 4])}
    )
    write_safetensors(folder / "model-2.safetensors", {"lm_head.weight": ("F16", [8, 4])})
    index = {"weight_map": {"model.embed_tokens.weight": "model-1.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    facts = check_base_model(folder, files(folder), upstream_bound=False)
    assert (facts.parameter_count, facts.local, facts.model_type) == (64, True, "llama")

    index["weight_map"]["lm_head.weight"] = "model-3.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UploadProblems) as missing:
        check_base_model(folder, files(folder), upstream_bound=False)
    assert "'model-3.safetensors', which was not uploaded" in problems(missing)[0]
