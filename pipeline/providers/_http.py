"""HTTP responses and transport failures to the error tree; Retry-After parsing; SSE framing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

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

_CONTEXT_MARKERS = (
    "context_length",
    "context length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)
MAX_ERROR_TEXT = 300


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@contextmanager
def translated(provider: str) -> Iterator[None]:
    """Transport failures of httpx become provider errors (no request details in them)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{provider}: {type(exc).__name__}") from None
    except httpx.RemoteProtocolError as exc:
        raise ProviderUnavailable(
            f"{provider}: connection closed early ({type(exc).__name__})"
        ) from None
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"{provider}: {type(exc).__name__}: {exc}") from None
    except httpx.DecodingError as exc:
        raise BadResponse(f"{provider}: undecodable response body ({exc})") from None


def error_for_response(response: httpx.Response, secrets: Sequence[str] = ()) -> ProviderError:
    """Map an HTTP error response (body already read) to the error tree."""
    status = response.status_code
    detail = scrub(_error_detail(response), secrets)[:MAX_ERROR_TEXT]
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    retry_after = retry_after_seconds(response.headers)
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status == 409 or status >= 500:
        return ProviderUnavailable(message, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(message, status=status)
    if status == 413 or any(marker in detail.lower() for marker in _CONTEXT_MARKERS):
        return ContextTooLong(message, status=status)
    return BadRequest(message, status=status)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError, httpx.DecodingError):
        return response.text.strip() if response.content else ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error.get("code") or "")
    if isinstance(error, str):
        return error
    return str(body)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """``retry-after-ms`` (OpenAI) wins over ``Retry-After`` in seconds; dates are ignored."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            continue
    return None


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except (ValueError, json.JSONDecodeError):
        raise BadResponse("response body is not JSON", status=response.status_code) from None
    if not isinstance(payload, dict):
        raise BadResponse("response body is not a JSON object", status=response.status_code)
    return payload


@dataclass(frozen=True)
class SSEvent:
    event: str
    data: str


def sse_events(lines: Iterable[str]) -> Iterator[SSEvent]:
    """Server-sent events from decoded lines: ``event:``/``data:`` fields, blank line ends one."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield SSEvent(event, "\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield SSEvent(event, "\n".join(data))


def event_json(event: SSEvent) -> dict[str, Any]:
    try:
        payload = json.loads(event.data)
    except json.JSONDecodeError:
        raise BadResponse(f"malformed JSON in stream event {event.event!r}") from None
    if not isinstance(payload, dict):
        raise BadResponse(f"stream event {event.event!r} is not a JSON object")
    return payload
