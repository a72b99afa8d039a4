"""Stream decoding, chunk reading and failure classification of the upstream engine."""

from __future__ import annotations

import httpx
import orjson
import pytest

from firebox.errors import InvalidArgument, RateLimited
from firebox.inference.engine import ChoiceFinished, TextDelta, UpstreamError, UpstreamTimeout
from firebox.inference.upstream_errors import (
    failure_from_error_chunk,
    failure_from_status,
    failure_from_transport,
    upstream_message,
)
from firebox.inference.upstream_events import ChunkReader
from firebox.inference.upstream_sse import MalformedStream, SseDecoder, decode_object


def feed_all(decoder: SseDecoder, *parts: bytes) -> list[bytes]:
    payloads: list[bytes] = []
    for part in parts:
        payloads += decoder.feed(part)
    return payloads + decoder.close()


def test_events_split_across_reads_are_joined() -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        decoder = SseDecoder()
        assert feed_all(decoder, stream[:cut], stream[cut:]) == [b'{"a": 1}', b'{"b": 2}']
        assert decoder.done


def test_an_event_is_returned_as_soon_as_its_blank_line_arrives() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a": 1}\n') == []
    assert decoder.feed(b"\n") == [b'{"a": 1}']


def test_crlf_comments_ignored_fields_and_multiline_data() -> None:
    stream = b': ping\r\nevent: message\r\nid: 7\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
    assert feed_all(SseDecoder(), stream) == [b'{"a":\n1}']


def test_unicode_line_separators_inside_json_do_not_split_lines() -> None:
    text = "a\u2028b\u0085c\x1cd"
    stream = b"data: " + orjson.dumps({"t": text}) + b"\n\n"
    [payload] = feed_all(SseDecoder(), stream)
    assert orjson.loads(payload) == {"t": text}


def test_nothing_after_done_is_read() -> None:
    decoder = SseDecoder()
    assert feed_all(decoder, b"data: [DONE]\n\ndata: {}\n\ngarbage\n") == []


def test_a_last_event_without_its_blank_line_is_kept() -> None:
    assert feed_all(SseDecoder(), b'data: {"a": 1}') == [b'{"a": 1}']


@pytest.mark.parametrize("stream", [b'{"id": "x", "choices": []}\n', b"<html>oops</html>\n"])
def test_a_stream_that_is_not_sse_is_malformed(stream: bytes) -> None:
    with pytest.raises(MalformedStream):
        SseDecoder().feed(stream)


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedStream) as caught:
        decode_object(payload)
    assert isinstance(caught.value, UpstreamError)


def test_chunk_reader_passes_deltas_and_tracks_unfinished_choices() -> None:
    reader = ChunkReader(chat=True)
    events = reader.read(
        {"choices": [{"index": 1, "delta": {"content": "hi"}, "finish_reason": None}]}
    )
    assert events == [TextDelta(index=1, text="hi")]
    assert reader.unfinished == {1}
    events = reader.read({"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]})
    assert events == [ChoiceFinished(index=1, finish_reason="stop")]
    assert reader.unfinished == set()
    with pytest.raises(MalformedStream):
        reader.read({"choices": [{"index": 0, "delta": {"content": 5}}]})


def test_tool_call_deltas_are_passed_on_as_is() -> None:
    reader = ChunkReader(chat=True)
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"x": 1}'}}
    events = reader.read({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    events += reader.read(
        {"choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]}
    )
    assert events == [
        TextDelta(index=0, tool_calls=[call]),
        TextDelta(index=0, tool_calls=[more]),
        ChoiceFinished(index=0, finish_reason="tool_calls"),
    ]
    assert reader.generated_texts() == ['f{"x": 1}']
    assert reader.content_chunks == 2


def test_reported_usage_includes_cached_tokens() -> None:
    reader = ChunkReader(chat=False)
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    reader.read({"choices": [], "usage": usage})
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.cached_tokens) == (9, 4)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "too long", "param": "messages"}}', "too long"),
        (b'{"object": "error", "message": "old vllm"}', "old vllm"),
        (b'{"error": "tgi style", "error_type": "validation"}', "tgi style"),
        (b'{"detail": "fastapi"}', "fastapi"),
        (b"plain text failure", "plain text failure"),
        (b"", "(empty response)"),
    ],
)
def test_upstream_messages_are_found_in_every_shape(body: bytes, message: str) -> None:
    assert upstream_message(body)[0] == message


def test_status_classification() -> None:
    rejected = failure_from_status(400, b'{"error": {"message": "bad", "param": "n"}}', {})
    assert isinstance(rejected.error, InvalidArgument)
    assert (rejected.error.code, rejected.error.param) == ("upstream_rejected", "n")
    assert not rejected.retryable and not rejected.replica_fault

    busy = failure_from_status(429, b"{}", {"retry-after": "3"})
    assert isinstance(busy.error, RateLimited) and busy.error.code == "upstream_overloaded"
    assert busy.error.headers == {"Retry-After": "3"}
    assert busy.retryable and not busy.replica_fault

    auth = failure_from_status(401, b"{}", {})
    assert isinstance(auth.error, UpstreamError) and not auth.retryable

    broken = failure_from_status(503, b'{"error": {"message": "loading"}}', {})
    assert isinstance(broken.error, UpstreamError) and broken.error.http_status == 502
    assert "HTTP 503" in broken.error.message and "loading" in broken.error.message
    assert broken.retryable and broken.replica_fault


def test_transport_classification() -> None:
    request = httpx.Request("POST", "http://x/v1/completions")
    refused = failure_from_transport(httpx.ConnectError("refused", request=request))
    assert isinstance(refused.error, UpstreamError) and refused.retryable
    connect = failure_from_transport(httpx.ConnectTimeout("slow", request=request))
    assert isinstance(connect.error, UpstreamTimeout) and connect.retryable
    read = failure_from_transport(httpx.ReadTimeout("slow", request=request))
    assert isinstance(read.error, UpstreamTimeout) and read.error.http_status == 504
    assert not read.retryable and read.replica_fault


def test_errors_inside_the_stream_are_recognised() -> None:
    assert failure_from_error_chunk({"choices": []}) is None
    failure = failure_from_error_chunk({"error": {"message": "oom", "code": 500}})
    assert failure is not None and isinstance(failure.error, UpstreamError)
    assert "oom" in failure.error.message
