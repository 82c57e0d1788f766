"""OpenAI-compatible servers (OpenAI, Together, Groq, OpenRouter, Fireworks, vLLM, Ollama,
llama.cpp): chat completions, or plain completions for base models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipeline.errors import BadResponse
from pipeline.prompts import COMPLETION_STOP, Message, completion_prompt
from pipeline.providers._base import Completion, Delta, Provider, finished, usage_pair
from pipeline.providers._http import SSEvent, event_json


class OpenAICompatible(Provider):
    @property
    def path(self) -> str:  # type: ignore[override]
        return "/completions" if self.spec.mode == "completion" else "/chat/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def body(
        self,
        model: str,
        messages: Sequence[Message],
        temperature: float,
        max_tokens: int,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model}
        if self.spec.mode == "completion":
            body["prompt"] = completion_prompt(messages, self.spec.prefix)
            body["stop"] = list(self.spec.stop or COMPLETION_STOP)
        else:
            body["messages"] = [dict(m) for m in messages]
            if self.spec.stop:
                body["stop"] = list(self.spec.stop)
        body.update(temperature=temperature, max_tokens=max_tokens)
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def _text(self, choice: Any) -> Any:
        if self.spec.mode == "completion":
            return choice.get("text")
        message = choice.get("message") or {}
        return message.get("content") if isinstance(message, Mapping) else None

    def parse(self, payload: Mapping[str, Any], body: Mapping[str, Any]) -> Completion:
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise BadResponse("response has no choices[0]")
        text = self._text(choices[0])
        if not isinstance(text, str):
            raise BadResponse("choices[0] has no text")
        usage = usage_pair(payload.get("usage"), "prompt_tokens", "completion_tokens")
        return finished(text, body, usage, choices[0].get("finish_reason"))

    def parse_stream(
        self, events: Iterable[SSEvent], body: Mapping[str, Any]
    ) -> Iterator[Delta | Completion]:
        parts: list[str] = []
        usage: tuple[int, int] | None = None
        reason: str | None = None
        for event in events:
            if event.data.strip() == "[DONE]":
                yield finished("".join(parts), body, usage, reason)
                return
            chunk = event_json(event)
            usage = usage_pair(chunk.get("usage"), "prompt_tokens", "completion_tokens") or usage
            for choice in chunk.get("choices") or []:
                piece = self._delta(choice)
                reason = choice.get("finish_reason") or reason
                if piece:
                    parts.append(piece)
                    yield Delta(piece)
        raise BadResponse("the stream ended before [DONE]: truncated")

    def _delta(self, choice: Any) -> str | None:
        if not isinstance(choice, Mapping):
            return None
        if self.spec.mode == "completion":
            text = choice.get("text")
        else:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, Mapping) else None
        return text if isinstance(text, str) else None
