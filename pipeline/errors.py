"""Errors of the MoA core, translated once at the provider seam.

    MoaError
     ├── ConfigError                 moa.toml or a preset is invalid
     └── ProviderError               one LLM call failed (carries status, retry_after)
          ├── RateLimited            429 (retry_after from the response headers)
          ├── ProviderTimeout        connect/read timeout, 408
          ├── ProviderUnavailable    5xx, connection refused or reset
          ├── BadRequest             other 4xx the caller caused
          │    ├── AuthError         401/403: never retried
          │    └── ContextTooLong    the prompt does not fit: never retried
          └── BadResponse            2xx whose body is not a usable completion

Messages never include request headers, so a provider key cannot leak into one.
"""

from __future__ import annotations


class MoaError(Exception):
    """Base of every error the core raises on purpose."""


class ConfigError(MoaError):
    """moa.toml, a preset or a job's configuration is invalid."""


class ProviderError(MoaError):
    code = "provider_error"
    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class RateLimited(ProviderError):
    code = "rate_limited"


class ProviderTimeout(ProviderError):
    code = "timeout"


class ProviderUnavailable(ProviderError):
    code = "unavailable"


class BadRequest(ProviderError):
    code = "bad_request"
    retryable = False


class AuthError(BadRequest):
    code = "auth"


class ContextTooLong(BadRequest):
    code = "context_too_long"


class BadResponse(ProviderError):
    code = "bad_response"
