"""The provider seam: one LLM call over an ``httpx.Client`` that the caller owns.

Every transport or HTTP failure is translated here, once, into the tree drawn
in :mod:`pipeline.errors`. Tests pass ``httpx.Client(transport=MockTransport(...))``
or point the client at the loopback simulator; nothing patches httpx.

Kinds (``kind`` in moa.toml): ``openai`` (any OpenAI-compatible server, chat or
completion mode) and ``anthropic`` (the Messages API). Both stream (SSE) with
usage captured from the stream when ``stream = true``.
"""

from __future__ import annotations

import httpx

from pipeline.errors import ConfigError
from pipeline.providers._anthropic import AnthropicMessages
from pipeline.providers._base import Completion, Delta, Provider, estimate_tokens
from pipeline.providers._http import error_for_response, retry_after_seconds
from pipeline.providers._openai import OpenAICompatible
from pipeline.specs import ProviderSpec

KINDS: dict[str, type[Provider]] = {"openai": OpenAICompatible, "anthropic": AnthropicMessages}

__all__ = [
    "KINDS",
    "AnthropicMessages",
    "Completion",
    "Delta",
    "OpenAICompatible",
    "Provider",
    "error_for_response",
    "estimate_tokens",
    "make_provider",
    "retry_after_seconds",
]


def make_provider(spec: ProviderSpec, client: httpx.Client, api_key: str | None = None) -> Provider:
    try:
        kind = KINDS[spec.kind]
    except KeyError:
        raise ConfigError(f"provider {spec.name!r}: unknown kind {spec.kind!r}") from None
    return kind(spec, client, api_key)
