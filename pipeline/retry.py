"""When to try a failed call again, as a pure function; Celery only applies it."""

from __future__ import annotations

import random
from collections.abc import Callable

from pipeline.errors import ProviderError


def retry_delay(
    error: ProviderError,
    attempt: int,
    *,
    max_attempts: int = 4,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to give up.

    Exponential backoff with jitter; a provider's Retry-After wins when it is
    longer, up to ``cap_s``.
    """
    if not error.retryable or attempt >= max_attempts:
        return None
    backoff = base_s * 2.0 ** (attempt - 1) * (0.5 + rand() / 2)
    hinted = error.retry_after or 0.0
    return min(cap_s, max(backoff, hinted))
