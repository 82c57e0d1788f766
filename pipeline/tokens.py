"""Token counts for fitting prompts into a model's context before anything is sent.

OpenAI's encodings come from ``bpe-openai`` (tiktoken-compatible tables shipped
in the wheel, so counting works offline); other models are estimated with
cl100k, which is close enough to reject a prompt that cannot fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pipeline.errors import ContextTooLong
from pipeline.prompts import Message

PER_MESSAGE = 4  # role and separators of the chat format


@lru_cache(maxsize=64)
def _encoding(model: str) -> Any:
    # bpe-openai 0.1.4 loads its tables through a deprecated importlib.resources call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai
        except ImportError:  # pragma: no cover - counted by estimate without it
            return None
        try:
            return bpe_openai.encoding_for_model(model)
        except Exception:  # an unknown model: estimate with a common encoding
            return bpe_openai.get_encoding("cl100k_base")


def count_tokens(text: str, model: str = "") -> int:
    encoding = _encoding(model)
    if encoding is None:
        return max(1, len(text) // 4)
    return len(encoding.encode(text))


def prompt_tokens(messages: Sequence[Message], model: str = "") -> int:
    return sum(count_tokens(m["content"], model) + PER_MESSAGE for m in messages)


def check_fits(
    messages: Sequence[Message], model: str, context_window: int, max_tokens: int
) -> int:
    """The prompt's token count; ContextTooLong when prompt plus answer cannot fit."""
    needed = prompt_tokens(messages, model)
    if needed + max_tokens > context_window:
        raise ContextTooLong(
            f"prompt of about {needed} tokens plus max_tokens {max_tokens} exceeds the "
            f"context window of {context_window} for {model}"
        )
    return needed
