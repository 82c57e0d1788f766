"""Anthropic Messages and SSE streaming for both kinds, against the documented wire formats
(httpx.MockTransport only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pipeline.errors import AuthError, BadResponse, ContextTooLong, ProviderUnavailable, RateLimited
from pipeline.prompts import Message
from pipeline.providers import Completion, Delta, Provider, make_provider
from pipeline.specs import ProviderSpec

KEY = "sk-ant-test-0123456789abcdef"
ASK: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
]
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def connect() -> Iterator[Callable[..., Provider]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler, **spec: Any) -> Provider:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        fields = {"name": "p", "base_url": "http://p.test/v1", **spec}
        return make_provider(ProviderSpec(**fields), client, api_key=KEY)

    yield make
    for client in clients:
        client.close()


def sse(*events: tuple[str | None, Any]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def streaming(body: bytes, sent: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return handler


def ask(provider: Provider) -> Completion:
    return provider.complete("m-1", ASK, temperature=0.0, max_tokens=32)


# --- Anthropic Messages -------------------------------------------------------------------------

ANTHROPIC_OK = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "4"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 12, "output_tokens": 1},
}


def test_anthropic_request_puts_the_system_prompt_apart_and_the_key_in_x_api_key(connect):
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=ANTHROPIC_OK)

    result = ask(connect(handler, kind="anthropic"))

    (request,) = sent
    assert str(request.url) == "http://p.test/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "model": "m-1",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 32,
        "temperature": 0.0,
    }
    assert result == Completion("4", 12, 1, True, "end_turn")


@pytest.mark.parametrize(
    ("status", "error", "raised"),
    [
        (429, {"type": "rate_limit_error", "message": "slow down"}, RateLimited),
        (529, {"type": "overloaded_error", "message": "Overloaded"}, ProviderUnavailable),
        (401, {"type": "authentication_error", "message": "invalid x-api-key"}, AuthError),
        (
            400,
            {"type": "invalid_request_error", "message": "prompt is too long: 300000 tokens"},
            ContextTooLong,
        ),
    ],
)
def test_anthropic_errors_map_to_the_tree(connect, status, error, raised):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json={"type": "error", "error": error}, headers={"retry-after": "3"}
        )

    with pytest.raises(raised) as info:
        ask(connect(handler, kind="anthropic"))
    assert error["message"] in info.value.message


def text_delta(text: str) -> tuple[str, dict[str, Any]]:
    delta = {"type": "text_delta", "text": text}
    return ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})


def test_anthropic_stream_yields_text_and_usage(connect):
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 12, "output_tokens": 1}},
    }
    block = {"type": "text", "text": ""}
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 5},
    }
    body = sse(
        ("message_start", start),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        ("ping", {"type": "ping"}),
        text_delta("Four"),
        text_delta(" (4)"),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", end),
        ("message_stop", {"type": "message_stop"}),
    )
    sent: list[httpx.Request] = []
    provider = connect(streaming(body, sent), kind="anthropic")

    events = list(provider.stream("m-1", ASK, temperature=0.0, max_tokens=32))

    assert json.loads(sent[0].content)["stream"] is True
    assert events == [Delta("Four"), Delta(" (4)"), Completion("Four (4)", 12, 5, True, "end_turn")]


def test_anthropic_stream_error_event_is_translated(connect):
    body = sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    )
    with pytest.raises(ProviderUnavailable, match="overloaded_error"):
        list(
            connect(streaming(body), kind="anthropic").stream("m", ASK, temperature=0, max_tokens=5)
        )


# --- OpenAI-compatible streaming ---------------------------------------------------------------


def chunk(
    content: str | None = None, finish: str | None = None, usage: Any = None
) -> dict[str, Any]:
    choices = (
        [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    data: dict[str, Any] = {"object": "chat.completion.chunk", "choices": choices}
    if usage:
        data["usage"] = usage
    return data


def test_openai_stream_asks_for_usage_and_assembles_the_answer(connect):
    body = sse(
        (None, chunk("Fo")),
        (None, chunk("ur")),
        (None, chunk(None, "stop")),
        (None, chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})),
        (None, "[DONE]"),
    )
    sent: list[httpx.Request] = []
    provider = connect(streaming(body, sent))

    events = list(provider.stream("m-1", ASK, temperature=0.0, max_tokens=32))

    request = json.loads(sent[0].content)
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert events == [Delta("Fo"), Delta("ur"), Completion("Four", 9, 2, True, "stop")]


def test_stream_setting_makes_complete_read_the_stream(connect):
    body = sse((None, chunk("4", "stop")), (None, "[DONE]"))
    result = ask(connect(streaming(body), stream=True))
    assert result.text == "4" and result.usage_reported is False  # no usage chunk: estimated


def test_completion_mode_streams_text_pieces(connect):
    pieces = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in (" Par", "is")]
    body = sse(*((None, p) for p in pieces), (None, "[DONE]"))
    events = list(
        connect(streaming(body), mode="completion").stream("m", ASK, temperature=0, max_tokens=5)
    )
    assert events[:2] == [Delta(" Par"), Delta("is")]
    assert isinstance(events[-1], Completion) and events[-1].text == "Paris"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (sse((None, chunk("Fo"))), "truncated"),
        (sse((None, "{not json")), "malformed JSON"),
    ],
)
def test_broken_streams_are_bad_responses(connect, body, message):
    with pytest.raises(BadResponse, match=message):
        ask(connect(streaming(body), stream=True))


def test_stream_error_status_is_translated_before_reading_events(connect):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": {"message": "busy"}}, headers={"retry-after-ms": "1500"}
        )

    with pytest.raises(RateLimited) as info:
        ask(connect(handler, stream=True))
    assert info.value.retry_after == 1.5


def test_a_dropped_stream_is_translated(connect):
    class Dropping(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield sse((None, chunk("Fo")))
            raise httpx.RemoteProtocolError("peer closed connection")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Dropping())

    with pytest.raises(ProviderUnavailable, match="closed early"):
        ask(connect(handler, stream=True))
