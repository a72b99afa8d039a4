"""One account sending 8 MB prompts in a loop does not stall the server for anyone else.

Issue 13, finding 2, through the real server: while account A sends 8 MB chat
prompts (refused from their byte length: they cannot fit firebox-tiny's
context) and 1 MB embedding inputs (tokenized on the tokenizer pool, not the
event loop), ``/healthz`` and account B's small chats keep answering. The
prompt cap is raised above 8 MB so that the per-tokenizer rule and the pool,
not the cap, are what is exercised. Completion is asserted, never timing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import OPERATOR_KEY
from tests.e2e.enforcement_support import new_member
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

TINY = "accounts/firebox/models/firebox-tiny"
MINILM = "accounts/firebox/models/all-minilm-l6-v2"
EIGHT_MB = 8_000_000  # under the 8 MiB body cap, so the body cap does not answer for us


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    data = tmp_path_factory.mktemp("bigprompt")
    server = start_server(
        data,
        env={
            "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
            "FIREBOX_WARM_LOCAL_ENGINES": "true",
            "FIREBOX_MAX_PROMPT_BYTES": str(16 * 1024 * 1024),
            "FIREBOX_ENFORCEMENT": "false",  # rate limits would answer A before the tokenizer
        },
        timeout_s=180,
    )
    key = json.loads((data / "credentials.json").read_text())["demoKey"]
    yield server, key
    server.stop()


class _Flood:
    """Account A's loop of big requests, on a thread, until told to stop."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.stop = threading.Event()
        self.first_done = threading.Event()
        self.results: list[tuple[str, int, str]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chat = {"model": TINY, "messages": [{"role": "user", "content": "a" * EIGHT_MB}]}
        embed = {"model": MINILM, "input": "word " * 200_000}  # 1 MB: tokenized in full
        try:
            with httpx.Client(headers=self.headers, timeout=None) as http:
                turn = 0
                while not self.stop.is_set():
                    path, body = ("chat", chat) if turn % 2 == 0 else ("embeddings", embed)
                    route = "chat/completions" if path == "chat" else "embeddings"
                    response = http.post(f"{self.url}/inference/v1/{route}", json=body)
                    code = response.json().get("error", {}).get("code", "")
                    self.results.append((path, response.status_code, code))
                    self.first_done.set()
                    turn += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.first_done.set()


def test_big_prompts_of_one_account_do_not_stall_health_or_other_accounts(
    served: tuple[RunningServer, str],
) -> None:
    server, key_a = served
    member_b = new_member(server.url, "bravo")
    flood = _Flood(server.url, key_a)
    flood.thread.start()
    try:
        assert flood.first_done.wait(600), "account A's first big request never answered"
        small = {
            "model": TINY,
            "messages": [{"role": "user", "content": "Name a color."}],
            "max_tokens": 4,
        }
        with httpx.Client(timeout=None) as http:
            for _ in range(3):
                assert http.get(f"{server.url}/healthz").status_code == 200
                answer = http.post(
                    f"{server.url}/inference/v1/chat/completions",
                    json=small,
                    headers=member_b.headers,
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["usage"]["completion_tokens"] > 0
    finally:
        flood.stop.set()
        flood.thread.join(600)
    assert flood.error is None, flood.error
    chats = [r for r in flood.results if r[0] == "chat"]
    embeds = [r for r in flood.results if r[0] == "embeddings"]
    # The 8 MB chats are refused from their length (cannot fit), never by the body cap.
    assert chats and all(r[1:] == (400, "context_length_exceeded") for r in chats)
    assert all(r[1] == 200 for r in embeds)
