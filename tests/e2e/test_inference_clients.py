"""Unmodified ``openai`` and ``fireworks-ai`` clients against a real server.

The server's catalog binds ``llama-8b`` (and its LoRA add-on) to a fake
vLLM-shaped upstream on loopback, and serves all-MiniLM-L6-v2 in process.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator

import fireworks
import httpx
import openai
import pytest

from tests.conftest import OPERATOR_KEY
from tests.inference.conftest import ADAPTER
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

BASE = "accounts/firebox/models/llama-8b"
ADDON = "accounts/firebox/models/llama-8b-sql"
EMBED = "accounts/firebox/models/all-minilm-l6-v2"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(
        model="meta-llama/Llama-3.1-8B", adapters=(ADAPTER,), context_length=512
    ) as f:
        yield f


@pytest.fixture(scope="module")
def served(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    data = tmp_path_factory.mktemp("inference")
    catalog = data / "catalog.toml"
    catalog.write_text(
        f"""
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 512
public = true
[models.engine]
type = "upstream"
urls = ["{fake.url}"]
upstreamModel = "{fake.model}"
timeoutS = 10

[[models]]
id = "llama-8b-sql"
kind = "HF_PEFT_ADDON"
baseModel = "accounts/firebox/models/llama-8b"
upstreamAdapter = "{ADAPTER}"
loraRank = 8
targetModules = ["q_proj", "v_proj"]
public = true
deployed = true
"""
    )
    server = start_server(
        data, env={"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_CATALOG_FILE": str(catalog)}
    )
    demo_key = json.loads((data / "credentials.json").read_text())["demoKey"]
    yield server, demo_key
    server.stop()


def _openai(
    served: tuple[RunningServer, str], prefix: str = "/inference/v1", key: str | None = None
) -> openai.OpenAI:
    server, demo_key = served
    return openai.OpenAI(base_url=server.url + prefix, api_key=key or demo_key, max_retries=0)


def test_openai_chat_plain_and_streaming(served: tuple[RunningServer, str]) -> None:
    client = _openai(served)
    answer = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hello there"}], max_tokens=6
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 0

    stream = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert pieces and usage is not None and usage.completion_tokens == 5


def test_openai_completions_lora_and_v1_prefix(
    served: tuple[RunningServer, str], fake: FakeUpstream
) -> None:
    client = _openai(served, prefix="/v1")
    answer = client.completions.create(model=ADDON, prompt="SELECT", max_tokens=3)
    assert answer.choices[0].text and answer.usage is not None
    assert fake.requests[-1]["model"] == ADAPTER
    stream = client.completions.create(model=ADDON, prompt="SELECT", max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_openai_embeddings_float_and_base64(served: tuple[RunningServer, str]) -> None:
    client = _openai(served)
    result = client.embeddings.create(model=EMBED, input=["A man is eating food.", "A cat sleeps."])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0
    encoded = client.embeddings.create(
        model=EMBED, input="A man is eating food.", encoding_format="base64"
    )
    raw = base64.b64decode(encoded.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert list(decoded) == pytest.approx(result.data[0].embedding, abs=1e-5)


def test_openai_errors_are_typed(served: tuple[RunningServer, str], fake: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        _openai(served, key="fb_wrong").chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "x"}]
        )
    client = _openai(served)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="accounts/firebox/models/missing", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "x"}], extra_body={"bogus": 1}
        )
    assert "bogus" in str(bad.value)
    fake.fail_status = 429
    try:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x"}])
    finally:
        fake.fail_status = None


def test_fireworks_sdk_chat_and_completions(served: tuple[RunningServer, str]) -> None:
    server, demo_key = served
    fw = fireworks.Fireworks(api_key=demo_key, base_url=server.url, max_retries=0)
    answer = fw.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    streamed = fw.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    completion = fw.completions.create(model=ADDON, prompt="SELECT", max_tokens=2)
    assert completion.choices[0].text
    with pytest.raises(fireworks.NotFoundError):
        fw.chat.completions.create(
            model="accounts/firebox/models/missing", messages=[{"role": "user", "content": "x"}]
        )


def _metric(server: RunningServer, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=60).text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_cancels_upstream_and_still_meters(
    served: tuple[RunningServer, str], fake: FakeUpstream
) -> None:
    server, _ = served
    fake.token_delay = 0.05
    before = _metric(server, 'firebox_usage_records_total{kind="chat",outcome="cancelled"}')
    disconnects = fake.disconnects
    try:
        client = _openai(served)
        stream = client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "long"}], max_tokens=200, stream=True
        )
        for i, _chunk in enumerate(stream):
            if i == 2:
                break
        stream.close()
        deadline = time.monotonic() + 60  # only the failure path
        while time.monotonic() < deadline and fake.disconnects == disconnects:
            time.sleep(0.02)
        assert fake.disconnects > disconnects, "the upstream generation was not cancelled"
        while (
            time.monotonic() < deadline
            and _metric(server, 'firebox_usage_records_total{kind="chat",outcome="cancelled"}')
            == before
        ):
            time.sleep(0.02)
        assert (
            _metric(server, 'firebox_usage_records_total{kind="chat",outcome="cancelled"}')
            == before + 1
        )
    finally:
        fake.token_delay = 0.0


def test_every_admission_is_timed_in_the_metrics(served: tuple[RunningServer, str]) -> None:
    server, _ = served
    before = _metric(server, "firebox_admission_duration_seconds_count")
    client = _openai(served)
    for _ in range(3):
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert _metric(server, "firebox_admission_duration_seconds_count") == before + 3
    assert _metric(server, "firebox_admission_duration_seconds_sum") > 0
