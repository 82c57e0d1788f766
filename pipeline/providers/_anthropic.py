"""Anthropic's Messages API, natively: system prompt apart, usage as input/output tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipeline.errors import BadResponse, ProviderUnavailable, RateLimited
from pipeline.prompts import Message
from pipeline.providers._base import Completion, Delta, Provider, finished, usage_pair
from pipeline.providers._http import SSEvent, event_json

API_VERSION = "2023-06-01"


class AnthropicMessages(Provider):
    path = "/messages"

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def body(
        self,
        model: str,
        messages: Sequence[Message],
        temperature: float,
        max_tokens: int,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [
            {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
        ]
        body: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if system:
            body["system"] = system
        if self.spec.stop:
            body["stop_sequences"] = list(self.spec.stop)
        if stream:
            body["stream"] = True
        return body

    def parse(self, payload: Mapping[str, Any], body: Mapping[str, Any]) -> Completion:
        content = payload.get("content")
        if not isinstance(content, list):
            raise BadResponse("response has no content list")
        texts = [
            b.get("text") for b in content if isinstance(b, Mapping) and b.get("type") == "text"
        ]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise BadResponse("response has no text block")
        usage = usage_pair(payload.get("usage"), "input_tokens", "output_tokens")
        return finished("".join(str(t) for t in texts), body, usage, payload.get("stop_reason"))

    def parse_stream(
        self, events: Iterable[SSEvent], body: Mapping[str, Any]
    ) -> Iterator[Delta | Completion]:
        parts: list[str] = []
        prompt_tokens: int | None = None
        output_tokens: int | None = None
        reason: str | None = None
        for event in events:
            data = event_json(event)
            kind = data.get("type", event.event)
            if kind == "message_start":
                usage = (data.get("message") or {}).get("usage") or {}
                prompt_tokens = usage.get("input_tokens")
            elif kind == "content_block_delta":
                text = (data.get("delta") or {}).get("text")
                if isinstance(text, str) and text:
                    parts.append(text)
                    yield Delta(text)
            elif kind == "message_delta":
                output_tokens = (data.get("usage") or {}).get("output_tokens", output_tokens)
                reason = (data.get("delta") or {}).get("stop_reason") or reason
            elif kind == "error":
                raise _stream_error(data)
            elif kind == "message_stop":
                usage_reported = isinstance(prompt_tokens, int) and isinstance(output_tokens, int)
                usage = (prompt_tokens, output_tokens) if usage_reported else None
                yield finished("".join(parts), body, usage, reason)  # type: ignore[arg-type]
                return
        raise BadResponse("the stream ended before message_stop: truncated")


def _stream_error(data: Mapping[str, Any]) -> Exception:
    error = data.get("error") or {}
    kind, message = error.get("type", "error"), str(error.get("message", ""))[:300]
    if kind == "rate_limit_error":
        return RateLimited(f"stream error {kind}: {message}")
    if kind in ("overloaded_error", "api_error"):
        return ProviderUnavailable(f"stream error {kind}: {message}")
    return BadResponse(f"stream error {kind}: {message}")
