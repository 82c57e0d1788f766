"""The pure retry policy: which errors retry, and after how long."""

from __future__ import annotations

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
from pipeline.retry import retry_delay


def _top() -> float:
    return 1.0


def _bottom() -> float:
    return 0.0


@pytest.mark.parametrize("error_type", [BadRequest, AuthError, ContextTooLong])
def test_errors_the_caller_caused_are_never_retried(error_type: type[ProviderError]) -> None:
    assert retry_delay(error_type("no", status=400), 1, rand=_top) is None


@pytest.mark.parametrize(
    "error_type", [RateLimited, ProviderTimeout, ProviderUnavailable, BadResponse]
)
def test_transient_errors_are_retried(error_type: type[ProviderError]) -> None:
    assert retry_delay(error_type("again"), 1, rand=_top) == 1.0


@pytest.mark.parametrize(("attempt", "gives_up"), [(3, False), (4, True), (5, True)])
def test_gives_up_once_attempts_are_used(attempt: int, gives_up: bool) -> None:
    delay = retry_delay(ProviderTimeout("slow"), attempt, max_attempts=4, rand=_top)
    assert (delay is None) is gives_up


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (4, 4.0, 8.0)]
)
def test_backoff_doubles_with_jitter_between_half_and_full(
    attempt: int, low: float, high: float
) -> None:
    error = ProviderUnavailable("down")
    assert retry_delay(error, attempt, max_attempts=10, rand=_bottom) == low
    assert retry_delay(error, attempt, max_attempts=10, rand=_top) == high
    assert retry_delay(error, attempt, max_attempts=10, rand=lambda: 0.5) == (low + high) / 2


def test_backoff_is_capped() -> None:
    delay = retry_delay(ProviderUnavailable("down"), 9, max_attempts=20, cap_s=60.0, rand=_top)
    assert delay == 60.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(30.0, 30.0), (0.2, 2.0), (600.0, 60.0), (None, 2.0)],
    ids=["longer-wins", "shorter-ignored", "capped", "absent"],
)
def test_retry_after_is_honoured_up_to_the_cap(retry_after: float | None, expected: float) -> None:
    error = RateLimited("slow down", status=429, retry_after=retry_after)
    assert retry_delay(error, 2, rand=_top) == expected


def test_base_and_cap_are_parameters() -> None:
    error = RateLimited("slow down", retry_after=100.0)
    assert retry_delay(error, 1, base_s=3.0, rand=_top, cap_s=5.0) == 5.0
    assert retry_delay(ProviderTimeout("t"), 2, base_s=3.0, rand=_top) == 6.0
