"""Checking every line of a dataset's files, and counting its examples and tokens.

The validator reads the files line by line (never a whole file in memory)
and reports every problem with its file and line number: invalid UTF-8 or
JSON, a line that is not an object, a missing or malformed ``messages``
list, a role outside system/user/assistant/tool, a chat example without an
assistant turn, an example longer than the context length, an OpenAI batch
line without ``custom_id`` or ``body`` or with a repeated ``custom_id``.
Past ``max_problems`` it goes on counting problems without keeping them.

What each line holds (``DatasetLayout``) is the declared format's, or else
found on the first line that parses: ``messages`` is chat, ``prompt`` a
completion example, ``custom_id`` a batch request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from firebox.finetune.dataset_models import DatasetLayout
from firebox.finetune.dataset_tokens import TokenCounter

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer line is reported, not read into memory
DEFAULT_MAX_PROBLEMS = 100
_READ = 64 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one line."""

    file: str
    line: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Report:
    """What the validator found in all files."""

    layout: DatasetLayout = DatasetLayout.UNKNOWN
    example_count: int = 0
    token_count: int = 0
    turn_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0  # all of them, also those past the kept list

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def average_turns(self) -> float:
        return self.turn_count / self.example_count if self.example_count else 0.0


class Validator:
    """Feeds files through the checks; ``report`` holds the result."""

    def __init__(
        self,
        counter: TokenCounter,
        *,
        layout: DatasetLayout = DatasetLayout.UNKNOWN,
        max_example_tokens: int | None = None,
        max_problems: int = DEFAULT_MAX_PROBLEMS,
    ) -> None:
        self._counter = counter
        self._max_tokens = max_example_tokens
        self._max_problems = max_problems
        self._custom_ids: set[str] = set()
        self.report = Report(layout=layout)

    def feed(self, filename: str, stream: BinaryIO) -> None:
        """Check every line of one file."""
        for number, raw in _lines(stream):
            if raw is None:
                self._problem(filename, number, f"the line is longer than {MAX_LINE_BYTES} bytes")
                continue
            if not raw.strip():
                continue  # blank lines are allowed, and are not examples
            for message in self._check(raw):
                self._problem(filename, number, message)

    def missing(self, filename: str, message: str) -> None:
        """Report a problem with a whole file (absent, or of another size than announced)."""
        self._problem(filename, 0, message)

    def finish(self) -> Report:
        """The report, with a problem for a dataset that holds no example."""
        if self.report.example_count == 0 and self.report.problem_count == 0:
            self._problem(
                "", 0, "the dataset holds no example; upload a JSONL file with one per line"
            )
        return self.report

    def _problem(self, filename: str, line: int, message: str) -> None:
        self.report.problem_count += 1
        if len(self.report.problems) < self._max_problems:
            self.report.problems.append(Problem(filename, line, message))

    def _check(self, raw: bytes) -> list[str]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [f"the line is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8"]
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return [f"invalid JSON: {exc}"]
        if not isinstance(value, dict):
            return ["the line is not a JSON object"]
        layout = self.report.layout
        if layout is DatasetLayout.UNKNOWN:
            layout = self.report.layout = _layout_of(value)
        if layout is DatasetLayout.COMPLETION:
            problems, tokens, turns = self._completion(value)
        elif layout is DatasetLayout.BATCH:
            problems, tokens, turns = self._batch(value)
        else:
            problems, tokens, turns = self._chat(value, require_assistant=True)
        if not problems and self._max_tokens is not None and tokens > self._max_tokens:
            problems.append(
                f"the example is {tokens} tokens, longer than the context length of "
                f"{self._max_tokens}; shorten or split it"
            )
        if not problems:
            self.report.example_count += 1
            self.report.token_count += tokens
            self.report.turn_count += turns
        return problems

    def _chat(
        self, value: dict[str, Any], *, require_assistant: bool
    ) -> tuple[list[str], int, int]:
        messages = value.get("messages")
        if messages is None:
            return ["missing 'messages': each line must be {\"messages\": [...]}"], 0, 0
        if not isinstance(messages, list) or not messages:
            return ["'messages' must be a non-empty list of messages"], 0, 0
        problems: list[str] = []
        for index, message in enumerate(messages):
            problems.extend(_message_problems(index, message))
        if problems:
            return problems, 0, 0
        if require_assistant and not any(m["role"] == "assistant" for m in messages):
            return ["the example has no assistant turn to learn from"], 0, 0
        normalized = [{**m, "content": _content_text(m.get("content"))} for m in messages]
        return [], self._counter.count_chat(normalized), len(messages)

    def _completion(self, value: dict[str, Any]) -> tuple[list[str], int, int]:
        prompt, completion = value.get("prompt"), value.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return ["a completion example needs string fields 'prompt' and 'completion'"], 0, 0
        return [], self._counter.count_text(prompt + completion), 1

    def _batch(self, value: dict[str, Any]) -> tuple[list[str], int, int]:
        custom_id, body = value.get("custom_id"), value.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            return ["a batch request needs a non-empty string 'custom_id'"], 0, 0
        if custom_id in self._custom_ids:
            return [f"custom_id {custom_id!r} is used on an earlier line; make each unique"], 0, 0
        self._custom_ids.add(custom_id)
        if not isinstance(body, dict):
            return ["a batch request needs a 'body' object (a chat completion request)"], 0, 0
        problems, tokens, turns = self._chat(body, require_assistant=False)
        return [f"body: {p}" for p in problems], tokens, turns


def _layout_of(value: dict[str, Any]) -> DatasetLayout:
    if "messages" in value:
        return DatasetLayout.CHAT
    if "custom_id" in value or "body" in value:
        return DatasetLayout.BATCH
    if "prompt" in value or "completion" in value:
        return DatasetLayout.COMPLETION
    return DatasetLayout.CHAT


def _message_problems(index: int, message: Any) -> list[str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return [f"{where} is not an object"]
    role = message.get("role")
    if role not in ROLES:
        return [f"{where} has role {role!r}; use one of system, user, assistant, tool"]
    content = message.get("content")
    if content is None and role == "assistant" and message.get("tool_calls"):
        return []
    if _content_text(content) is None:
        return [f"{where} needs a 'content' string (or a list of text parts)"]
    return []


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, line without its ending)``; ``None`` for a line over the size bound."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = stream.readline(_READ)
            yield number, None
            continue
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]  # editors on Windows write one; it is not content
        yield number, line.rstrip(b"\r\n")
