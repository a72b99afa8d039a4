"""The dataset validator: every line, every problem with its line number, a bounded list."""

from __future__ import annotations

import io
import json

import pytest

from firebox.finetune import dataset_validation
from firebox.finetune.dataset_models import DatasetLayout
from firebox.finetune.dataset_tokens import ByteEstimate
from firebox.finetune.dataset_validation import Validator
from tests.finetune.dataset_support import chat_line


def _run(text: bytes, **options: object) -> dataset_validation.Report:
    validator = Validator(ByteEstimate(), **options)  # type: ignore[arg-type]
    validator.feed("f.jsonl", io.BytesIO(text))
    return validator.finish()


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_a_clean_chat_file_counts_examples_turns_and_tokens() -> None:
    tool_turns = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    report = _run(_lines(chat_line("Hi?", "Hello."), "", json.dumps(tool_turns)))
    assert report.ok, report.problems
    assert (report.layout, report.example_count, report.turn_count) == (DatasetLayout.CHAT, 2, 7)
    assert report.token_count > 0


def test_the_empty_file_and_windows_line_endings() -> None:
    empty = _run(b"\n\n")
    assert empty.problem_count == 1 and "holds no example" in empty.problems[0].message
    crlf = (chat_line("a?", "b.") + "\r\n" + chat_line("c?", "d.") + "\r\n").encode()
    assert _run(crlf).example_count == 2
    assert _run(b"\xef\xbb\xbf" + crlf).ok  # a byte order mark is not content


def test_the_list_is_bounded_but_every_problem_is_counted() -> None:
    report = _run(_lines(*["{bad"] * 30), max_problems=5)
    assert report.problem_count == 30
    assert [p.line for p in report.problems] == [1, 2, 3, 4, 5]


def test_examples_longer_than_the_context_are_reported() -> None:
    report = _run(
        _lines(chat_line("x" * 400, "y"), chat_line("short?", "ok.")), max_example_tokens=50
    )
    assert [p.line for p in report.problems] == [1]
    assert "longer than the context length of 50" in report.problems[0].message
    assert report.example_count == 1


def test_batch_request_lines() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    report = _run(
        _lines(
            json.dumps({"custom_id": "a", "body": body}),
            json.dumps({"custom_id": "a", "body": body}),  # repeated id
            json.dumps({"custom_id": "b"}),  # no body
            json.dumps({"custom_id": "c", "body": {"messages": [{"role": "x"}]}}),
        )
    )
    assert report.layout is DatasetLayout.BATCH
    assert report.example_count == 1  # no assistant turn needed in a request
    messages = {p.line: p.message for p in report.problems}
    assert "used on an earlier line" in messages[2]
    assert "'body'" in messages[3]
    assert messages[4].startswith("body: messages[0] has role 'x'")


def test_completion_lines_when_declared() -> None:
    report = _run(
        _lines(json.dumps({"prompt": "2+2=", "completion": "4"}), json.dumps({"prompt": 1})),
        layout=DatasetLayout.COMPLETION,
    )
    assert report.example_count == 1
    assert [p.line for p in report.problems] == [2]


def test_a_line_over_the_size_bound_is_reported_without_reading_it_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataset_validation, "MAX_LINE_BYTES", 100)
    report = _run(_lines(chat_line("a?", "b."), "x" * 1000, chat_line("c?", "d.")))
    assert [(p.line, "longer than 100 bytes" in p.message) for p in report.problems] == [(2, True)]
    assert report.example_count == 2
