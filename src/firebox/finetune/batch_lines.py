"""One line of a batch: the request it holds in, the result line it becomes out.

Input lines are OpenAI batch requests, ``{"custom_id": "...", "body": {chat
completion request}}`` (``method`` and ``url`` may be present: only ``POST``
to ``/v1/chat/completions`` is served). The job's inference parameters fill
in what a line's body leaves out, and a Fireworks job's ``model`` replaces
the body's. Output lines are OpenAI's batch output shape: ``{"id",
"custom_id", "response": {"status_code", "request_id", "body"}, "error"}``,
with ``error`` set (and the error body as the response) when the line failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from firebox.errors import FireboxError, InvalidArgument
from firebox.inference.protocol import ChatCompletionRequest

CHAT_URL = "/v1/chat/completions"
MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A parsed input line: its ``custom_id`` and the request to run (or why it cannot run)."""

    index: int
    custom_id: str | None
    request: ChatCompletionRequest | None
    problem: FireboxError | None = None


def parse_line(index: int, raw: bytes, defaults: dict[str, Any], model: str | None) -> BatchLine:
    """Line ``index`` (0-based among non-blank lines) as a request; a bad line keeps its problem."""
    where = f"line {index + 1}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BatchLine(index, None, None, _invalid(f"{where} is not valid JSON: {exc}"))
    if not isinstance(data, dict):
        return BatchLine(index, None, None, _invalid(f"{where} must be a JSON object."))
    custom_id = data.get("custom_id")
    if custom_id is not None and (not isinstance(custom_id, str) or len(custom_id) > MAX_CUSTOM_ID):
        return BatchLine(
            index, None, None, _invalid(f"{where}: custom_id must be a string of at most 512.")
        )
    method, url = data.get("method", "POST"), data.get("url", CHAT_URL)
    if method != "POST" or url not in (CHAT_URL, "/chat/completions", "/inference" + CHAT_URL):
        problem = _invalid(
            f"{where}: only POST {CHAT_URL} is served in a batch (got {method} {url})."
        )
        return BatchLine(index, custom_id, None, problem)
    body = data.get("body")
    if not isinstance(body, dict):
        return BatchLine(index, custom_id, None, _invalid(f"{where}: body must be a JSON object."))
    merged = {**defaults, **body}
    if model is not None:
        merged["model"] = model
    if merged.get("stream"):
        problem = _invalid(f"{where}: stream is not supported in a batch; remove it.")
        return BatchLine(index, custom_id, None, problem)
    merged.pop("stream", None)
    merged.pop("stream_options", None)
    try:
        request = ChatCompletionRequest.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = f"{where}: invalid value for {param or 'body'!r}: {first['msg']}"
        return BatchLine(index, custom_id, None, InvalidArgument(message, param=param))
    return BatchLine(index, custom_id, request)


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, code="invalid_batch_line")


def result_line(request_id: str, custom_id: str | None, answer: dict[str, Any]) -> str:
    """The output line of a line answered with ``answer`` (a chat completion)."""
    return orjson.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": answer},
            "error": None,
        }
    ).decode()


def error_line(request_id: str, custom_id: str | None, error: FireboxError) -> str:
    """The output line of a line that failed with ``error``."""
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    return orjson.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": {
                "status_code": error.http_status,
                "request_id": request_id,
                "body": {"error": {**detail, "type": error.error_type}},
            },
            "error": detail,
        }
    ).decode()


def parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """A Fireworks job's ``inferenceParameters`` as body defaults (snake_case OpenAI names).

    ``extraBody`` is a JSON string of more body fields (the SDK's own shape).
    """
    names = {
        "maxTokens": "max_tokens",
        "temperature": "temperature",
        "topP": "top_p",
        "topK": "top_k",
        "n": "n",
    }
    defaults: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "extraBody":
            if value in (None, ""):
                continue
            try:
                extra = orjson.loads(value) if isinstance(value, str) else value
            except orjson.JSONDecodeError:
                raise InvalidArgument(
                    "inferenceParameters.extraBody must be a JSON object encoded as a string.",
                    param="inferenceParameters.extraBody",
                ) from None
            if not isinstance(extra, dict):
                raise InvalidArgument(
                    "inferenceParameters.extraBody must encode a JSON object.",
                    param="inferenceParameters.extraBody",
                )
            defaults.update(extra)
        elif key in names:
            if value is not None:
                defaults[names[key]] = value
        else:
            raise InvalidArgument(
                f"Unknown inference parameter {key!r}: use maxTokens, temperature, topP, topK, "
                "n or extraBody.",
                param=f"inferenceParameters.{key}",
            )
    return defaults
