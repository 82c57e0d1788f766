"""What every provider kind shares: the result types, sending, streaming, usage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.errors import BadResponse
from pipeline.prompts import Message
from pipeline.providers._http import (
    SSEvent,
    error_for_response,
    json_object,
    sse_events,
    translated,
)
from pipeline.specs import ProviderSpec


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    finish_reason: str | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text; a stream ends with exactly one Completion."""

    text: str


def estimate_tokens(text: str) -> int:
    """Rough count (about 4 characters a token) for providers that report no usage."""
    return max(1, len(text) // 4)


def usage_pair(usage: Any, prompt_key: str, completion_key: str) -> tuple[int, int] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get(prompt_key), usage.get(completion_key)
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text a request sends, for estimating its tokens."""
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    parts = [body.get("system") if isinstance(body.get("system"), str) else ""]
    parts += [m.get("content", "") for m in body.get("messages", []) if isinstance(m, dict)]
    return " ".join(p for p in parts if isinstance(p, str))


def finished(
    text: str, body: Mapping[str, Any], usage: tuple[int, int] | None, reason: str | None
) -> Completion:
    if usage is None:
        usage_reported, (prompt, completion) = (
            False,
            (estimate_tokens(prompt_text(body)), estimate_tokens(text)),
        )
    else:
        usage_reported, (prompt, completion) = True, usage
    return Completion(text.strip(), prompt, completion, usage_reported, reason)


class Provider(ABC):
    """One provider endpoint; the httpx client is the caller's and is shared."""

    path: str = ""

    def __init__(self, spec: ProviderSpec, client: httpx.Client, api_key: str | None = None):
        self.spec = spec
        self._client = client
        self._api_key = api_key

    def __repr__(self) -> str:  # the key stays out of every repr and traceback
        return f"{type(self).__name__}(name={self.spec.name!r}, base_url={self.spec.base_url!r})"

    @property
    def _secrets(self) -> tuple[str, ...]:
        return (self._api_key,) if self._api_key else ()

    def complete(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Completion:
        if self.spec.stream:
            return collect(
                self.stream(model, messages, temperature=temperature, max_tokens=max_tokens)
            )
        body = self.body(model, messages, temperature, max_tokens, stream=False)
        with translated(self.spec.name):
            response = self._client.post(
                self.spec.base_url + self.path,
                json=body,
                headers=self.headers(),
                timeout=self.spec.timeout_s,
            )
            if response.status_code >= 400:
                raise error_for_response(response, self._secrets)
            return self.parse(json_object(response), body)

    def stream(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Iterator[Delta | Completion]:
        body = self.body(model, messages, temperature, max_tokens, stream=True)
        url = self.spec.base_url + self.path
        with (
            translated(self.spec.name),
            self._client.stream(
                "POST", url, json=body, headers=self.headers(), timeout=self.spec.timeout_s
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_for_response(response, self._secrets)
            yield from self.parse_stream(sse_events(response.iter_lines()), body)

    @abstractmethod
    def headers(self) -> dict[str, str]: ...

    @abstractmethod
    def body(
        self,
        model: str,
        messages: Sequence[Message],
        temperature: float,
        max_tokens: int,
        *,
        stream: bool,
    ) -> dict[str, Any]: ...

    @abstractmethod
    def parse(self, payload: Mapping[str, Any], body: Mapping[str, Any]) -> Completion: ...

    @abstractmethod
    def parse_stream(
        self, events: Iterable[SSEvent], body: Mapping[str, Any]
    ) -> Iterator[Delta | Completion]: ...


def collect(stream: Iterable[Delta | Completion]) -> Completion:
    for event in stream:
        if isinstance(event, Completion):
            return event
    raise BadResponse("the stream ended without a final completion")
