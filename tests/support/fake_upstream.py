"""A fast, vLLM-shaped fake of an OpenAI-compatible model server.

Tests start it on a background thread on a free loopback port::

    with FakeUpstream(token_delay=0.01) as upstream:
        engine = UpstreamEngine([upstream.url], upstream.model)

and benchmarks run it as a process (uvloop and httptools when installed)::

    python tests/support/fake_upstream.py --port 8001 --token-delay 0.005

It serves ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings`` as vLLM does, streaming or not, deterministically: N tokens
``tok0 tok1 ...``, one per chunk (N = ``max_tokens``, else 16 and finish
"stop"); prompt tokens are whitespace words. It honours ``stop``, ``n``,
``logprobs`` and ``echo`` (it never calls tools); an unknown model is a 404, a
prompt over the context length a 400 in vLLM's words. Knobs and records are
plain attributes (see ``_clear``); ``reset()`` lets one fake serve many tests.

A plain ASGI app, no framework: it has to outrun the gateway it benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
import uvicorn

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TOKENS = 16
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON = [(b"content-type", b"application/json")]


class _DropConnection(Exception):
    """Raised once the response started: uvicorn then closes the connection."""


class FakeUpstream:
    """The fake server: its knobs, what it recorded, and ``start``/``stop``."""

    def __init__(
        self,
        *,
        model: str = "fake-model",
        adapters: tuple[str, ...] = (),
        context_length: int = 4096,
        token_delay: float = 0.0,
        embedding_dim: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model, self.adapters = model, list(adapters)
        self.context_length, self.embedding_dim = context_length, embedding_dim
        self.in_flight = 0
        self._default_delay, self._host, self._port = token_delay, host, port
        self._lock, self._ids = threading.Lock(), itertools.count()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    def _clear(self) -> None:
        # knobs, changeable while it runs
        self.token_delay = self._default_delay  # seconds before each token chunk
        self.fail_status: int | None = None  # answer every POST with this status
        self.fail_close = False  # start every answer, then drop the connection
        self.close_after_tokens: int | None = None  # drop a stream after N tokens
        self.hold_after_tokens: int | None = None  # a longer stream stalls after N tokens until
        # its client leaves: in flight for as long as a test needs, however slow the machine
        self.omit_usage = False  # never send usage, even when asked
        # records (and ``in_flight``, requests being served now)
        self.requests: list[dict[str, Any]] = []  # the bodies received
        self.peak_in_flight = 0
        self.disconnects = 0  # streams the client left before their end
        self.connections: set[int] = set()  # client ports seen: keep-alive reuse

    def reset(self, timeout: float = 60.0) -> None:
        """Wait for requests in flight to end; restore the knobs; forget the records."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            self._clear()

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._host}:{self._port}/v1"

    def start(self) -> FakeUpstream:
        """Serve on a background thread; returns once it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            interface="asgi3",
            lifespan="off",
            log_config=None,  # leave the test process's logging alone
            log_level="critical",  # a dropped connection is a traceback otherwise
            access_log=False,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60  # only the failure path
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop at once, dropping any open connection."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    # -- the ASGI app -----------------------------------------------------

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if scope.get("client"):
            self.connections.add(scope["client"][1])
        if (method, path) == ("GET", "/v1/models"):
            models = [{"id": self.model, "parent": None}]
            models += [{"id": name, "parent": self.model} for name in self.adapters]
            data = [m | {"object": "model", "owned_by": "vllm"} for m in models]
            await _json(send, 200, {"object": "list", "data": data})
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            with self._tracked():
                await self._generate(path == "/v1/chat/completions", receive, send)
        elif (method, path) == ("POST", "/v1/embeddings"):
            with self._tracked():
                await self._embeddings(receive, send)
        else:
            await _error(send, 404, f"Not found: {method} {path}", "NotFoundError")

    async def _admit(self, receive: Receive, send: Send) -> dict[str, Any] | None:
        """Read and record the body; answer the failure knobs and an unknown model."""
        raw, more = b"", True
        while more:
            message = await receive()
            raw, more = raw + message.get("body", b""), message.get("more_body", False)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return await _error(send, 400, "Invalid JSON body.", "BadRequestError")
        self.requests.append(body)
        if self.fail_close:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            raise _DropConnection
        if self.fail_status is not None:
            message = f"Fake failure (HTTP {self.fail_status})."
            return await _error(send, self.fail_status, message, "FakeError")
        if body.get("model") not in (self.model, *self.adapters):
            message = f"The model `{body.get('model')}` does not exist."
            return await _error(send, 404, message, "NotFoundError")
        return dict(body)

    async def _generate(self, chat: bool, receive: Receive, send: Send) -> None:
        body = await self._admit(receive, send)
        if body is None:
            return
        prompt = _prompt_words(body, chat)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        requested = prompt + (max_tokens or 0)
        if requested > self.context_length or prompt >= self.context_length:
            message = (
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {requested} tokens ({prompt} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the "
                "messages or completion."
            )
            await _error(send, 400, message, "BadRequestError")
            return
        answer = _Answer(self, body, chat, prompt, max_tokens)
        if body.get("stream"):
            await self._stream(answer, receive, send)
        else:
            await asyncio.sleep(self.token_delay * len(answer.pieces))
            await _json(send, 200, answer.whole())

    async def _stream(self, answer: _Answer, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(disconnected())
        try:
            for position, chunks in enumerate(answer.chunks()):
                if position > 0:  # the role chunk goes out at once, as vLLM's does
                    if self.token_delay:
                        await asyncio.wait([watcher], timeout=self.token_delay)
                    if watcher.done():
                        with self._lock:
                            self.disconnects += 1
                        return
                    if self.close_after_tokens is not None and position > self.close_after_tokens:
                        raise _DropConnection
                    hold = self.hold_after_tokens
                    if hold is not None and hold < position <= len(answer.pieces):
                        await watcher
                        with self._lock:
                            self.disconnects += 1
                        return
                data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher

    async def _embeddings(self, receive: Receive, send: Send) -> None:
        body = await self._admit(receive, send)
        if body is None:
            return
        inputs = body.get("input")
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dim = body.get("dimensions") or self.embedding_dim
        tokens = sum(len(i) if isinstance(i, list) else len(i.split()) for i in inputs)
        vectors = [_vector(item, dim) for item in inputs]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        await _json(send, 200, answer)


class _Answer:
    """The deterministic answer to one generation request."""

    def __init__(
        self, fake: FakeUpstream, body: dict[str, Any], chat: bool, prompt: int, max_tokens: Any
    ) -> None:
        self.body, self.chat, self.prompt_tokens = body, chat, prompt
        self.n = int(body.get("n") or 1)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-fake{next(fake._ids)}"
        self.usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        self.omit_usage = fake.omit_usage
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        self.pieces, self.finish_reason = _pieces(max_tokens, stops)
        logprobs = body.get("logprobs")
        self.logprobs = bool(logprobs) if chat else logprobs is not None
        self.top = int((body.get("top_logprobs") if chat else logprobs) or 0)
        echo = not chat and body.get("echo") and isinstance(body.get("prompt"), str)
        self.echo: str = body["prompt"] if echo else ""

    def usage(self) -> dict[str, int]:
        prompt, completion = self.prompt_tokens, len(self.pieces) * self.n
        total = prompt + completion
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}

    def _frame(self, choices: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        head = {"id": self.id, "object": kind, "created": int(time.time())}
        return head | {"model": self.body["model"], "choices": choices}

    def chunks(self) -> Iterator[list[dict[str, Any]]]:
        """Chunks grouped by position: the role chunks (chat), then a token each."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        role = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        roles = [{"index": i, **role, "finish_reason": None} for i in range(self.n)]
        yield [self._frame([r], kind) for r in roles] if self.chat else []
        last = len(self.pieces) - 1
        for at, piece in enumerate(self.pieces):
            finish = self.finish_reason if at == last else None
            yield [self._frame([self._choice(i, at, piece, finish)], kind) for i in range(self.n)]
        if self.usage_wanted and not self.omit_usage:
            yield [self._frame([], kind) | {"usage": self.usage()}]

    def _choice(self, index: int, at: int, piece: str, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish}
        choice["logprobs"] = self._logprobs([piece]) if self.logprobs and piece else None
        if self.chat:
            return choice | {"delta": {"content": piece}}
        return choice | {"text": piece if at else self.echo + piece}

    def _logprobs(self, pieces: list[str]) -> dict[str, Any]:
        if self.chat:
            entries = [{"token": p, "logprob": -0.25, "bytes": list(p.encode())} for p in pieces]
            return {"content": [e | {"top_logprobs": [e] * self.top} for e in entries]}
        return {
            "tokens": pieces,
            "token_logprobs": [-0.25] * len(pieces),
            "top_logprobs": [{p: -0.25} for p in pieces] if self.top else None,
            "text_offset": list(itertools.accumulate([0] + [len(p) for p in pieces[:-1]])),
        }

    def whole(self) -> dict[str, Any]:
        """The non-streaming answer."""
        text = "".join(self.pieces)
        logprobs = self._logprobs([p for p in self.pieces if p]) if self.logprobs else None
        choices: list[dict[str, Any]] = []
        for i in range(self.n):
            if self.chat:
                choice = {"index": i, "message": {"role": "assistant", "content": text}}
            else:
                choice = {"index": i, "text": self.echo + text}
            choices.append(choice | {"logprobs": logprobs, "finish_reason": self.finish_reason})
        answer = self._frame(choices, "chat.completion" if self.chat else "text_completion")
        return answer if self.omit_usage else answer | {"usage": self.usage()}


def _pieces(max_tokens: int | None, stops: list[str]) -> tuple[list[str], str]:
    """The text of each token chunk, cut at the first stop string, and the finish reason."""
    pieces: list[str] = []
    text = ""
    for i in range(max_tokens if max_tokens is not None else DEFAULT_TOKENS):
        token = f"tok{i}" if i == 0 else f" tok{i}"
        cut = min((at for s in stops if (at := (text + token).find(s)) != -1), default=-1)
        if cut != -1:
            pieces.append((text + token)[len(text) : cut])
            return pieces, "stop"
        pieces.append(token)
        text += token
    return pieces, "length" if max_tokens is not None else "stop"


def _prompt_words(body: dict[str, Any], chat: bool) -> int:
    if not chat:
        prompt = body.get("prompt") or ""
        return len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
    words = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            words += sum(len(p.get("text", "").split()) for p in content if p.get("type") == "text")
    return words


def _vector(item: str | list[int], dim: int) -> list[float]:
    digest = hashlib.sha256(repr(item).encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _error(send: Send, status: int, message: str, kind: str) -> None:
    """An error in the OpenAI shape vLLM uses."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    await _json(send, status, {"error": error})


def main() -> None:
    """Run the fake as a process, for benchmarks."""
    parser = argparse.ArgumentParser(description="A fast, vLLM-shaped fake OpenAI server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--adapter", dest="adapters", action="append", default=[])
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--context-length", type=int, default=4096)
    options = vars(parser.parse_args())
    host, port = options.pop("host"), options.pop("port")
    fake = FakeUpstream(**options | {"adapters": tuple(options["adapters"])})
    quiet: dict[str, Any] = {"log_level": "warning", "access_log": False}
    # loop and http stay "auto": uvloop and httptools when installed
    uvicorn.run(fake, host=host, port=port, interface="asgi3", lifespan="off", **quiet)


if __name__ == "__main__":
    main()
