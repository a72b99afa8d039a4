"""Batch lines: how a line and the job's parameters become a request, and what a bad one says."""

from __future__ import annotations

import json

import pytest

from firebox.errors import InvalidArgument
from firebox.finetune.batch_lines import error_line, parameters, parse_line, result_line

MESSAGES = [{"role": "user", "content": "hi"}]


def _raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_job_parameters_fill_in_what_a_line_leaves_out_and_the_job_model_wins() -> None:
    defaults = parameters({"maxTokens": 3, "topK": 5, "extraBody": '{"stop": ["\\n"], "seed": 7}'})
    assert defaults == {"max_tokens": 3, "top_k": 5, "stop": ["\n"], "seed": 7}
    body = {"model": "accounts/x/models/y", "messages": MESSAGES, "max_tokens": 9}
    line = parse_line(4, _raw(custom_id="a", body=body), defaults, "accounts/f/models/tiny")
    assert line.problem is None and line.request is not None
    request = line.request
    assert (request.model, request.max_tokens, request.top_k, request.seed) == (
        "accounts/f/models/tiny",
        9,
        5,
        7,
    )
    openai_line = parse_line(0, _raw(custom_id="b", body=body), {}, None)
    assert openai_line.request is not None and openai_line.request.model == "accounts/x/models/y"


@pytest.mark.parametrize(
    ("raw", "custom_id", "says"),
    [
        (b"{nope", None, "line 3 is not valid JSON"),
        (b"[1]", None, "must be a JSON object"),
        (_raw(custom_id=5, body={}), None, "custom_id must be a string"),
        (_raw(custom_id="u", url="/v1/embeddings", body={}), "u", "only POST"),
        (
            _raw(custom_id="s", body={"model": "m", "messages": MESSAGES, "stream": True}),
            "s",
            "stream",
        ),
        (_raw(custom_id="t", body={"model": "m", "messages": MESSAGES, "top_p": 7}), "t", "top_p"),
        (_raw(custom_id="n", body=None), "n", "body must be a JSON object"),
    ],
)
def test_a_bad_line_keeps_its_custom_id_and_says_what_is_wrong(
    raw: bytes, custom_id: str | None, says: str
) -> None:
    line = parse_line(2, raw, {}, None)
    assert line.request is None and line.problem is not None
    assert line.custom_id == custom_id and says in line.problem.message
    out = json.loads(error_line("batch-x-2", line.custom_id, line.problem))
    assert out["error"]["message"] == line.problem.message
    assert out["response"]["status_code"] == 400 and out["custom_id"] == custom_id


def test_result_lines_carry_the_answer_and_bad_parameters_are_refused_at_create() -> None:
    out = json.loads(result_line("batch-x-0", "a", {"choices": []}))
    assert out == {
        "id": "batch_req_batch-x-0",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "batch-x-0", "body": {"choices": []}},
        "error": None,
    }
    for bad in ({"extraBody": "{"}, {"extraBody": "[1]"}, {"frequency": 1}):
        with pytest.raises(InvalidArgument):
            parameters(bad)
