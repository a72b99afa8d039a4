"""Bring your own weights with the unmodified ``fireworks-ai`` SDK, on a real server.

A LoRA adapter is trained here with ``peft`` on firebox-tiny (a few steps, one
thread), uploaded through ``models.create`` / ``get_upload_endpoint`` / PUT /
``validate_upload``, and served at once: its answer differs from the base's.
Mismatched, pickled and oversized uploads are refused with clear errors; a
custom base model is refused for a Developer account and served for an
Enterprise one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fireworks
import httpx
import openai
import pytest
from fireworks import Fireworks

from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY_DIR = MODELS / "firebox-tiny"
TINY = "accounts/firebox/models/firebox-tiny"
QUESTION = "What color is the sky?"
TARGETS = ["q_proj", "v_proj", "o_proj"]
MAX_FILE_BYTES = 25_000_000  # the bundled base's 20 MB weights fit, not much more


def train_adapter(out: Path) -> Path:
    """A rank-4 LoRA on firebox-tiny that learns one odd answer in a few steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    base = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        ),
    )
    dialogue = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Zebra zebra zebra zebra."},
    ]
    text = tokenizer.apply_chat_template(dialogue, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def wrong_hidden_size(adapter: Path, out: Path) -> Path:
    """The same adapter as if trained on a base of hidden size 512 (A and B resized)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir()
    (out / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    resized = {}
    for key, tensor in tensors.items():
        if ".lora_A." in key:
            resized[key] = torch.zeros(tensor.shape[0], 512)
        else:
            resized[key] = torch.zeros(512, tensor.shape[1])
    save_file(resized, str(out / "adapter_model.safetensors"))
    return out


def upload_folder(client: Fireworks, model_id: str, folder: Path) -> None:
    """The SDK's calls around plain PUTs to the signed URLs (which carry no API key)."""
    sizes = {p.name: str(p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file()}
    urls = client.models.get_upload_endpoint(model_id, filename_to_size=sizes)
    assert urls.filename_to_signed_urls is not None
    assert sorted(urls.filename_to_signed_urls) == sorted(sizes)
    with httpx.Client(timeout=120) as plain:
        for name, url in urls.filename_to_signed_urls.items():
            plain.put(url, content=(folder / name).read_bytes()).raise_for_status()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("uploads")
    running = start_server(
        data,
        env={
            "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
            "FIREBOX_MODEL_UPLOAD_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        },
    )
    yield running
    running.stop()


def _member(server: RunningServer, account: str, plan: str) -> str:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(OPERATOR_KEY), account, plan=plan)
        return member_key(http, bearer(OPERATOR_KEY), account, f"{account}-u", "user")


def _answer(server: RunningServer, key: str, model: str) -> str:
    client = openai.OpenAI(
        base_url=f"{server.url}/inference/v1", api_key=key, max_retries=0, timeout=120
    )
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_a_trained_adapter_is_uploaded_validated_and_served(
    server: RunningServer, tmp_path: Path
) -> None:
    adapter = train_adapter(tmp_path / "adapter")
    key = _member(server, "tuner", "DEVELOPER")
    client = Fireworks(api_key=key, base_url=server.url, account_id="tuner", max_retries=0)
    peft = {"base_model": TINY, "r": 4, "target_modules": TARGETS}
    made = client.models.create(
        model_id="zebra", model={"kind": "HF_PEFT_ADDON", "peft_details": peft}
    )
    assert made.state == "UPLOADING"
    upload_folder(client, "zebra", adapter)
    assert client.models.validate_upload("zebra").warnings in (None, [])
    ready = client.models.get("zebra")
    assert ready.state == "READY"
    assert ready.to_dict()["priceClass"] == "TEXT_DENSE_UP_TO_16B"  # the base's rate

    base_answer = _answer(server, key, TINY)
    addon_answer = _answer(server, key, "accounts/tuner/models/zebra")
    assert addon_answer != base_answer
    assert "zebra" in addon_answer.lower()

    download = client.models.get_download_endpoint("zebra").filename_to_signed_urls or {}
    got = httpx.get(download["adapter_config.json"], timeout=60)
    assert json.loads(got.content) == json.loads((adapter / "adapter_config.json").read_text())

    # The same adapter declared with another rank, and one shaped for another base.
    client.models.create(
        model_id="r8", model={"kind": "HF_PEFT_ADDON", "peft_details": {**peft, "r": 8}}
    )
    upload_folder(client, "r8", adapter)
    with pytest.raises(fireworks.BadRequestError) as rank:
        client.models.validate_upload("r8")
    assert "r is 4 but the model was created with peftDetails.r = 8" in str(rank.value)
    client.models.create(model_id="wide", model={"kind": "HF_PEFT_ADDON", "peft_details": peft})
    upload_folder(client, "wide", wrong_hidden_size(adapter, tmp_path / "wide"))
    with pytest.raises(fireworks.BadRequestError) as wide:
        client.models.validate_upload("wide")
    assert "do not fit the base model (hidden size 256)" in str(wide.value)
    assert client.models.get("wide").state == "UPLOADING"

    # Pickles are refused by name, oversized files before a byte is sent.
    with pytest.raises(fireworks.BadRequestError) as pickled:
        client.models.get_upload_endpoint("wide", filename_to_size={"adapter_model.bin": "10"})
    assert "pickle-based weights are refused" in str(pickled.value)
    with pytest.raises(fireworks.APIStatusError) as big:
        client.models.get_upload_endpoint(
            "wide", filename_to_size={"adapter_model.safetensors": str(MAX_FILE_BYTES + 1)}
        )
    assert big.value.status_code == 413

    # In use (loaded for serving) it cannot be deleted; unloaded, it can.
    with pytest.raises(fireworks.BadRequestError) as busy:
        client.models.delete("zebra")
    assert "accounts/tuner/deployedModels/zebra" in str(busy.value)
    client.lora.unload("zebra")
    client.models.delete("zebra")


def test_custom_base_models_are_enterprise_only(server: RunningServer) -> None:
    developer = Fireworks(
        api_key=_member(server, "solo", "DEVELOPER"),
        base_url=server.url,
        account_id="solo",
        max_retries=0,
    )
    with pytest.raises(fireworks.PermissionDeniedError) as refused:
        developer.models.create(model_id="mine", model={"kind": "HF_BASE_MODEL"})
    assert "Enterprise plan" in str(refused.value) and "Developer" in str(refused.value)

    key = _member(server, "bigco", "ENTERPRISE")
    client = Fireworks(api_key=key, base_url=server.url, account_id="bigco", max_retries=0)
    client.models.create(model_id="mine", model={"kind": "HF_BASE_MODEL"})
    upload_folder(client, "mine", TINY_DIR)
    client.models.validate_upload("mine")
    model = client.models.get("mine")
    assert model.state == "READY"
    assert model.base_model_details is not None
    assert model.base_model_details.parameter_count == "4999424"
    assert _answer(server, key, "accounts/bigco/models/mine") == _answer(server, key, TINY)
