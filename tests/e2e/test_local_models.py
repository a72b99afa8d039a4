"""The bundled demo model and its add-on, served in process, through the real server.

What `make run` gives a user with no network: chat from firebox-tiny and its
UPPERCASE LoRA add-on (streaming too), with cached prompt tokens reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

TINY = "accounts/firebox/models/firebox-tiny"
LORA = "accounts/firebox/models/firebox-tiny-lora"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    data = tmp_path_factory.mktemp("local")
    server = start_server(
        data, env={"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_WARM_LOCAL_ENGINES": "true"}
    )
    key = json.loads((data / "credentials.json").read_text())["demoKey"]
    yield server, key
    server.stop()


def _client(served: tuple[RunningServer, str]) -> openai.OpenAI:
    server, key = served
    return openai.OpenAI(
        base_url=f"{server.url}/inference/v1", api_key=key, max_retries=0, timeout=120
    )


def test_chat_with_the_bundled_model_and_its_addon(served: tuple[RunningServer, str]) -> None:
    client = _client(served)
    question = [{"role": "user", "content": "What color is the sky?"}]
    base = client.chat.completions.create(
        model=TINY, messages=question, max_tokens=24, temperature=0
    )
    addon = client.chat.completions.create(
        model=LORA, messages=question, max_tokens=24, temperature=0
    )
    base_text = base.choices[0].message.content or ""
    addon_text = addon.choices[0].message.content or ""
    assert base_text and addon_text and base_text != addon_text
    letters = [c for c in addon_text if c.isalpha()]
    assert letters and sum(c.isupper() for c in letters) / len(letters) > 0.8  # the add-on's style
    assert base.usage is not None and addon.usage is not None
    assert base.usage.prompt_tokens == addon.usage.prompt_tokens  # same prompt, same tokenizer


def test_streaming_carries_prompt_headers_and_usage(served: tuple[RunningServer, str]) -> None:
    server, key = served
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "Name a day of the week."}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        f"{server.url}/inference/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        prompt_tokens = int(response.headers["fireworks-prompt-tokens"])
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["prompt_tokens"] == prompt_tokens > 0
    assert 0 < usage["completion_tokens"] <= 8


def test_a_shared_prefix_is_served_from_the_cache(served: tuple[RunningServer, str]) -> None:
    client = _client(served)
    system = "You are a helpful assistant. " * 20  # well over one KV block
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    client.chat.completions.create(model=TINY, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=TINY, messages=messages, max_tokens=2)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens or 0
    assert cached > 0 and cached % 16 == 0 and cached <= again.usage.prompt_tokens
