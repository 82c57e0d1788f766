"""Dependencies of the routes: settings, a database session, the caller's tenant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from api.errors import ApiError
from db.keys import hash_key, tenant_for_key
from moa.settings import Settings, get_settings, load_moa_config
from pipeline.specs import Config as MoaConfig
from workers import resources

_KEY_CACHE_S = 30.0  # a revoked key stops working within this
_tenants: dict[str, tuple[str, float]] = {}
_limiter: dict[str, MovingWindowRateLimiter] = {}


@dataclass(frozen=True)
class Principal:
    tenant: str


def settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def moa_config() -> MoaConfig:
    """moa.toml, parsed once per API process (restart the API after editing it)."""
    return load_moa_config(get_settings())


def db() -> Iterator[Session]:
    with resources.sessions()() as session:
        yield session


def _tenant(session: Session, digest: str) -> str | None:
    cached = _tenants.get(digest)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    tenant = tenant_for_key(session, digest)
    if tenant is not None:
        _tenants[digest] = (tenant, time.monotonic() + _KEY_CACHE_S)
    return tenant


@lru_cache(maxsize=4)
def _rate_item(text: str) -> RateLimitItem:
    return parse(text)


def _rate_limiter(url: str) -> MovingWindowRateLimiter:
    if url not in _limiter:
        storage = RedisStorage(url, connection_pool=resources.redis().connection_pool)
        _limiter[url] = MovingWindowRateLimiter(storage)
    return _limiter[url]


def principal(
    session: Annotated[Session, Depends(db)],
    config: Annotated[Settings, Depends(settings)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The tenant of a valid ``Authorization: Bearer KEY``; 401 otherwise, 429 over the limit."""
    scheme, _, key = (authorization or "").partition(" ")
    digest = hash_key(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    tenant = _tenant(session, digest) if digest else None
    if tenant is None:
        raise ApiError(
            401, "unauthorized", "a valid API key is required: Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    assert digest is not None
    item = _rate_item(config.api_rate_limit)
    limiter = _rate_limiter(config.effective_redis_url)
    if not limiter.hit(item, "api", digest):
        reset = limiter.get_window_stats(item, "api", digest).reset_time
        retry = str(max(1, int(reset - time.time()) + 1))
        message = f"rate limit of {config.api_rate_limit} per key exceeded"
        raise ApiError(429, "rate_limited", message, headers={"Retry-After": retry})
    return Principal(tenant=tenant)


Caller = Annotated[Principal, Depends(principal)]
DB = Annotated[Session, Depends(db)]
Config = Annotated[Settings, Depends(settings)]
