"""The provider seam over httpx.MockTransport: request shapes, parsing, error translation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pipeline.errors import (
    AuthError,
    BadRequest,
    BadResponse,
    ContextTooLong,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from pipeline.prompts import COMPLETION_STOP, Message
from pipeline.providers import Completion, Provider, make_provider, retry_after_seconds
from pipeline.specs import ProviderSpec

Handler = Callable[[httpx.Request], httpx.Response]
Connect = Callable[..., Provider]

KEY = "sk-test-0123456789abcdef0123456789abcdef"
QUESTION: list[Message] = [{"role": "user", "content": "What is 2+2?"}]
CHAT_OK = {
    "choices": [{"message": {"role": "assistant", "content": " 4 \n"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1},
}


@pytest.fixture
def connect() -> Iterator[Connect]:
    clients: list[httpx.Client] = []

    def make(handler: Handler, *, api_key: str | None = None, **spec: Any) -> Provider:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        fields = {"name": "p", "base_url": "http://p.test/v1", **spec}
        return make_provider(ProviderSpec(**fields), client, api_key=api_key)

    yield make
    for client in clients:
        client.close()


def _recording(sent: list[httpx.Request], body: dict[str, Any]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=body)

    return handler


def _ask(provider: Provider, messages: list[Message] = QUESTION) -> Completion:
    return provider.complete("m-1", messages, temperature=0.3, max_tokens=64)


def test_chat_request_shape(connect: Connect) -> None:
    sent: list[httpx.Request] = []
    _ask(connect(_recording(sent, CHAT_OK)))
    (request,) = sent
    assert (request.method, str(request.url)) == ("POST", "http://p.test/v1/chat/completions")
    assert json.loads(request.content) == {
        "model": "m-1",
        "messages": QUESTION,
        "temperature": 0.3,
        "max_tokens": 64,
    }
    assert "authorization" not in request.headers


def test_api_key_goes_in_a_bearer_header(connect: Connect) -> None:
    sent: list[httpx.Request] = []
    _ask(connect(_recording(sent, CHAT_OK), api_key=KEY))
    assert sent[0].headers["authorization"] == f"Bearer {KEY}"


def test_chat_completion_is_parsed_and_stripped(connect: Connect) -> None:
    completion = _ask(connect(_recording([], CHAT_OK)))
    assert completion == Completion("4", 11, 1, usage_reported=True, finish_reason="stop")


def test_missing_usage_is_estimated(connect: Connect) -> None:
    body = {"choices": [{"message": {"content": "x" * 40}}]}
    completion = _ask(connect(_recording([], body)), [{"role": "user", "content": "y" * 80}])
    assert (completion.prompt_tokens, completion.completion_tokens) == (20, 10)
    assert completion.usage_reported is False
    assert completion.finish_reason is None


def test_completion_mode_sends_a_rendered_prompt_with_stops(connect: Connect) -> None:
    sent: list[httpx.Request] = []
    body = {"choices": [{"text": " The answer is 4.\n", "finish_reason": "stop"}]}
    provider = connect(
        _recording(sent, body), mode="completion", prefix="Question: 1+1?\n\nAnswer: 2"
    )
    completion = _ask(provider)
    assert str(sent[0].url) == "http://p.test/v1/completions"
    assert json.loads(sent[0].content) == {
        "model": "m-1",
        "prompt": "Question: 1+1?\n\nAnswer: 2\n\nQuestion: What is 2+2?\n\nAnswer:",
        "stop": list(COMPLETION_STOP),
        "temperature": 0.3,
        "max_tokens": 64,
    }
    assert completion.text == "The answer is 4."


def test_completion_mode_uses_the_providers_stop_sequences(connect: Connect) -> None:
    sent: list[httpx.Request] = []
    provider = connect(
        _recording(sent, {"choices": [{"text": "4"}]}), mode="completion", stop=("##",)
    )
    _ask(provider)
    assert json.loads(sent[0].content)["stop"] == ["##"]


def _reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_type", "retry_after"),
    [
        (429, {"Retry-After": "7"}, {"error": {"message": "slow down"}}, RateLimited, 7.0),
        (429, {"retry-after-ms": "1500", "Retry-After": "7"}, {}, RateLimited, 1.5),
        (429, {}, {"error": "busy"}, RateLimited, None),
        (408, {}, "timed out", ProviderTimeout, None),
        (409, {}, {}, ProviderUnavailable, None),
        (500, {}, "boom", ProviderUnavailable, None),
        (503, {"Retry-After": "2"}, "overloaded", ProviderUnavailable, 2.0),
        (401, {}, {"error": {"message": "bad key"}}, AuthError, None),
        (403, {}, {"error": {"code": "forbidden"}}, AuthError, None),
        (
            400,
            {},
            {"error": {"message": "This model's maximum context length is 8192 tokens"}},
            ContextTooLong,
            None,
        ),
        (413, {}, "too large", ContextTooLong, None),
        (400, {}, {"error": {"message": "temperature must be <= 2"}}, BadRequest, None),
        (404, {}, {"error": {"message": "no such model"}}, BadRequest, None),
    ],
)
def test_http_errors_are_translated(
    connect: Connect,
    status: int,
    headers: dict[str, str],
    body: Any,
    error_type: type[ProviderError],
    retry_after: float | None,
) -> None:
    with pytest.raises(ProviderError) as info:
        _ask(connect(_reply(status, body, headers)))
    assert type(info.value) is error_type
    assert info.value.status == status
    assert info.value.retry_after == retry_after
    assert info.value.message.startswith(f"HTTP {status}")


def test_error_message_carries_the_providers_detail(connect: Connect) -> None:
    with pytest.raises(BadRequest, match=r"^HTTP 400: temperature must be <= 2$"):
        _ask(connect(_reply(400, {"error": {"message": "temperature must be <= 2"}})))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>ok</html>", "not JSON"),
        (["a"], "not a JSON object"),
        ({"id": "x"}, "no choices"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"message": {"content": None}}]}, "has no text"),
    ],
)
def test_unusable_success_bodies_are_bad_responses(
    connect: Connect, body: Any, message: str
) -> None:
    with pytest.raises(BadResponse, match=message):
        _ask(connect(_reply(200, body)))


def test_a_non_object_usage_is_estimated(connect: Connect) -> None:
    body = {"choices": [{"message": {"content": "4"}}], "usage": ["11", "1"]}
    assert _ask(connect(_reply(200, body))).usage_reported is False


def _raising(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


@pytest.mark.parametrize(
    ("raised", "error_type"),
    [
        (httpx.ConnectError("connection refused"), ProviderUnavailable),
        (httpx.RemoteProtocolError("peer closed"), ProviderUnavailable),
        (httpx.ReadTimeout("read timed out"), ProviderTimeout),
        (httpx.ConnectTimeout("connect timed out"), ProviderTimeout),
    ],
)
def test_transport_failures_are_translated(
    connect: Connect, raised: Exception, error_type: type[ProviderError]
) -> None:
    with pytest.raises(error_type) as info:
        _ask(connect(_raising(raised)))
    assert info.value.status is None
    assert info.value.message.startswith("p: ")


class _NotGzip(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield b"this is not gzip"


def test_a_body_that_cannot_be_decoded_is_translated(connect: Connect) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=_NotGzip())

    with pytest.raises(ProviderError):
        _ask(connect(handler))


def test_an_echoed_api_key_is_scrubbed_from_the_error(connect: Connect) -> None:
    body = {"error": {"message": f"Incorrect API key provided: {KEY}."}}
    with pytest.raises(AuthError) as info:
        _ask(connect(_reply(401, body), api_key=KEY))
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)
    assert info.value.message == "HTTP 401: Incorrect API key provided: ***."


def test_a_key_cut_by_truncation_is_not_leaked(connect: Connect) -> None:
    # The key starts at character 265 of the detail: its first 35 characters survive the cut.
    body = {"error": {"message": "x" * 260 + f" key {KEY}"}}
    with pytest.raises(AuthError) as info:
        _ask(connect(_reply(401, body), api_key=KEY))
    assert KEY[:30] not in str(info.value)


def test_repr_of_a_provider_hides_the_key(connect: Connect) -> None:
    provider = connect(_reply(200, CHAT_OK), api_key=KEY)
    assert KEY not in repr(provider)
    assert "http://p.test/v1" in repr(provider)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers)) == expected
