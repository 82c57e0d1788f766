"""Response cache policy and keys: identical deterministic requests are answered once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.prompts import Message


def cacheable(policy: str, temperature: float) -> bool:
    """``auto`` caches temperature-0 calls only: sampled answers must stay samples."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    return temperature == 0


def request_key(
    provider: str, model: str, messages: Sequence[Message], params: Mapping[str, Any]
) -> str:
    canonical = json.dumps(
        {"provider": provider, "model": model, "messages": list(messages), "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
