"""A whole (non-streaming) upstream answer becomes the same events as its stream would."""

from __future__ import annotations

from firebox.inference.engine import ChoiceFinished, TextDelta
from firebox.inference.upstream_events import ChunkReader, as_chunk


def test_chat_answer_with_tool_calls_and_usage() -> None:
    answer = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    reader = ChunkReader(chat=True)
    events = reader.read(as_chunk(answer, chat=True))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas[0].tool_calls == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert [e for e in events if isinstance(e, ChoiceFinished)] == [ChoiceFinished(0, "tool_calls")]
    assert reader.usage is not None and reader.usage.prompt_tokens == 7
    assert not reader.unfinished


def test_completion_answer_keeps_text_and_logprobs() -> None:
    logprobs = {
        "tokens": ["a"],
        "token_logprobs": [-0.1],
        "top_logprobs": [None],
        "text_offset": [0],
    }
    answer = {
        "choices": [{"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    reader = ChunkReader(chat=False)
    events = reader.read(as_chunk(answer, chat=False))
    [delta] = [e for e in events if isinstance(e, TextDelta)]
    assert delta.text == "a" and delta.logprobs == logprobs
    assert reader.generated_texts() == ["a"]
