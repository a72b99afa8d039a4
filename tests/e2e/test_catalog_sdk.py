"""The unmodified ``fireworks-ai`` SDK reads and writes models on a real server."""

from __future__ import annotations

import fireworks
import httpx
import pytest
from fireworks import Fireworks

from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

MINILM = "accounts/firebox/models/all-minilm-l6-v2"


def test_sdk_lists_and_gets_the_bundled_public_model(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(OPERATOR_KEY), "sdk-reader")
        key = member_key(http, bearer(OPERATOR_KEY), "sdk-reader", "rita", "inference-user")
    reader = Fireworks(api_key=key, base_url=server.url, account_id="firebox", max_retries=0)

    assert MINILM in [m.name for m in reader.models.list()]
    model = reader.models.get("all-minilm-l6-v2")
    assert model.name == MINILM
    assert (model.kind, model.state, model.public) == ("EMBEDDING_MODEL", "READY", True)
    assert model.context_length == 256
    assert model.base_model_details is not None
    assert model.base_model_details.parameter_count == "22700000"
    assert model.create_time is not None
    with pytest.raises(fireworks.NotFoundError):
        reader.models.get("no-such-model")


def test_sdk_model_lifecycle_with_a_member_addon(server: RunningServer) -> None:
    operator = Fireworks(
        api_key=OPERATOR_KEY, base_url=server.url, account_id="firebox", max_retries=0
    )
    base = operator.models.create(
        model_id="sdk-base",
        model={
            "kind": "HF_BASE_MODEL",
            "display_name": "SDK base",
            "context_length": 8192,
            "public": True,
            "base_model_details": {"parameter_count": "8000000000", "moe": False},
        },
    )
    assert base.name == "accounts/firebox/models/sdk-base"
    assert base.base_model_details is not None and base.base_model_details.parameter_count == (
        "8000000000"
    )
    with pytest.raises(fireworks.BadRequestError) as unpriced:
        operator.models.create(
            model_id="sdk-huge",
            model={
                "kind": "HF_BASE_MODEL",
                "base_model_details": {"parameter_count": "400000000000"},
            },
        )
    assert "price" in str(unpriced.value)

    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(OPERATOR_KEY), "sdk-tuner")
        key = member_key(http, bearer(OPERATOR_KEY), "sdk-tuner", "tom", "user")
    member = Fireworks(api_key=key, base_url=server.url, account_id="sdk-tuner", max_retries=0)
    for n in range(3):
        made = member.models.create(
            model_id=f"tuned-{n}",
            model={
                "kind": "HF_PEFT_ADDON",
                "peft_details": {
                    "base_model": "accounts/firebox/models/sdk-base",
                    "r": 16,
                    "target_modules": ["q_proj", "v_proj"],
                },
            },
        )
        assert made.peft_details is not None
        assert made.peft_details.base_model == "accounts/firebox/models/sdk-base"
        assert made.context_length == 8192  # inherited from the base
    with pytest.raises(fireworks.PermissionDeniedError):
        member.models.create(
            model_id="own-base",
            model={"kind": "HF_BASE_MODEL", "base_model_details": {"parameter_count": "1000"}},
        )

    # Auto-pagination follows nextPageToken.
    listed = [m.name for m in member.models.list(page_size=2)]
    assert listed == [f"accounts/sdk-tuner/models/tuned-{n}" for n in range(3)]

    updated = member.models.update("tuned-0", display_name="Tuned zero", description="SQL")
    assert (updated.display_name, updated.description) == ("Tuned zero", "SQL")
    assert member.models.get("tuned-0").display_name == "Tuned zero"

    with pytest.raises(fireworks.BadRequestError) as in_use:
        operator.models.delete("sdk-base")
    assert "accounts/sdk-tuner/models/tuned-0" in str(in_use.value)
    for n in range(3):
        member.models.delete(f"tuned-{n}")
    assert list(member.models.list()) == []
    operator.models.delete("sdk-base")
    with pytest.raises(fireworks.NotFoundError):
        operator.models.get("sdk-base")
