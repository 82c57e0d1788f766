"""The provider seam: one LLM call over an ``httpx.Client`` that the caller owns.

Every transport or HTTP failure is translated here, once, into the tree in
:mod:`pipeline.errors`. Tests pass ``httpx.Client(transport=MockTransport(...))``
or point the client at the loopback simulator; nothing patches httpx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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
from pipeline.prompts import COMPLETION_STOP, Message, completion_prompt
from pipeline.specs import ProviderSpec

_CONTEXT_MARKERS = (
    "context_length",
    "context length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    finish_reason: str | None = None


def estimate_tokens(text: str) -> int:
    """Rough count (about 4 characters a token) for providers that report no usage."""
    return max(1, len(text) // 4)


class Provider:
    """An OpenAI-compatible endpoint in chat or completion mode."""

    def __init__(self, spec: ProviderSpec, client: httpx.Client, api_key: str | None = None):
        self.spec = spec
        self._client = client
        self._api_key = api_key

    def __repr__(self) -> str:  # the key stays out of every repr and traceback
        return f"Provider(name={self.spec.name!r}, base_url={self.spec.base_url!r})"

    def complete(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Completion:
        if self.spec.mode == "completion":
            path, body = "/completions", self._completion_body(model, messages)
        else:
            path, body = "/chat/completions", {"model": model, "messages": list(messages)}
        body.update(temperature=temperature, max_tokens=max_tokens)
        payload = self._post(path, body)
        return self._parse(payload, messages)

    def _completion_body(self, model: str, messages: Sequence[Message]) -> dict[str, Any]:
        stop = list(self.spec.stop or COMPLETION_STOP)
        prompt = completion_prompt(messages, self.spec.prefix)
        return {"model": model, "prompt": prompt, "stop": stop}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.spec.base_url + path
        with self._translated():
            response = self._client.post(
                url, json=body, headers=self._headers(), timeout=self.spec.timeout_s
            )
        if response.status_code >= 400:
            raise self._scrub(error_for_response(response))
        try:
            payload = response.json()
        except ValueError:
            raise BadResponse("response body is not JSON", status=response.status_code) from None
        if not isinstance(payload, dict):
            raise BadResponse("response body is not a JSON object", status=response.status_code)
        return payload

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"{self.spec.name}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"{self.spec.name}: {type(exc).__name__}: {exc}") from None

    def _scrub(self, error: ProviderError) -> ProviderError:
        if self._api_key and self._api_key in error.message:
            error.message = error.message.replace(self._api_key, "***")
            error.args = (error.message,)
        return error

    def _parse(self, payload: dict[str, Any], messages: Sequence[Message]) -> Completion:
        try:
            choice = payload["choices"][0]
            text = (
                choice["text"] if self.spec.mode == "completion" else choice["message"]["content"]
            )
        except (KeyError, IndexError, TypeError):
            raise BadResponse("response has no choices[0] text") from None
        if not isinstance(text, str):
            raise BadResponse("completion text is not a string")
        usage = payload.get("usage") or {}
        reported = isinstance(usage.get("prompt_tokens"), int) and isinstance(
            usage.get("completion_tokens"), int
        )
        if reported:
            prompt_tokens, completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        else:
            prompt_tokens = estimate_tokens(" ".join(m["content"] for m in messages))
            completion_tokens = estimate_tokens(text)
        return Completion(
            text=text.strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_reported=reported,
            finish_reason=choice.get("finish_reason"),
        )


def error_for_response(response: httpx.Response) -> ProviderError:
    """Map an HTTP error response to the error tree."""
    status = response.status_code
    detail = _error_detail(response)
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        return RateLimited(
            message, status=status, retry_after=retry_after_seconds(response.headers)
        )
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status == 409 or status >= 500:
        return ProviderUnavailable(
            message, status=status, retry_after=retry_after_seconds(response.headers)
        )
    if status in (401, 403):
        return AuthError(message, status=status)
    if any(marker in detail.lower() for marker in _CONTEXT_MARKERS) or status == 413:
        return ContextTooLong(message, status=status)
    return BadRequest(message, status=status)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text[:_MAX_ERROR_TEXT].strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "")[:_MAX_ERROR_TEXT]
    if isinstance(error, str):
        return error[:_MAX_ERROR_TEXT]
    return str(body)[:_MAX_ERROR_TEXT]


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
