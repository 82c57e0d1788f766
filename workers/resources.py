"""Per-process resources: one httpx client, one engine, the loaded config and providers.

Built on first use and dropped in a forked child, so every process (prefork
child or threads-pool worker) holds exactly one of each, never one per task.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import httpx
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_sessionmaker
from moa.settings import get_settings
from pipeline.plan import Plan
from pipeline.providers import Provider, make_provider
from pipeline.specs import Config, ProviderSpec, config_from_snapshot
from workers.gate import Gate

T = TypeVar("T")
_lock = threading.RLock()  # re-entrant: a factory may build another resource
_state: dict[str, Any] = {}
_plans: OrderedDict[int, tuple[Config, Plan]] = OrderedDict()
_PLAN_CACHE = 256


def _reset() -> None:
    _state.clear()
    _plans.clear()


os.register_at_fork(after_in_child=_reset)


def _get(name: str, factory: Callable[[], T]) -> T:
    value = _state.get(name)
    if value is None:
        with _lock:
            value = _state.get(name)
            if value is None:
                value = _state[name] = factory()
    return cast(T, value)


def _pool_size() -> int:
    settings = get_settings()
    return max(settings.proposer_concurrency, settings.aggregator_concurrency, 4)


def engine() -> Engine:
    url = get_settings().effective_database_url
    return _get("engine", lambda: make_engine(url, pool_size=_pool_size()))


def sessions() -> sessionmaker[Session]:
    return _get("sessions", lambda: make_sessionmaker(engine()))


def http_client() -> httpx.Client:
    def build() -> httpx.Client:
        limits = httpx.Limits(
            max_connections=_pool_size() * 2, max_keepalive_connections=_pool_size()
        )
        return httpx.Client(limits=limits, timeout=httpx.Timeout(120.0, connect=10.0))

    return _get("http", build)


def redis() -> Redis:
    return _get("redis", lambda: Redis.from_url(get_settings().effective_redis_url))


def gate() -> Gate:
    return _get("gate", lambda: Gate(redis(), get_settings().effective_redis_url))


def provider(spec: ProviderSpec) -> Provider:
    """One Provider per spec; the key is read from the environment, never from the job."""
    key = f"provider:{spec.name}:{hash(spec)}"

    def build() -> Provider:
        api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        return make_provider(spec, http_client(), api_key)

    return _get(key, build)


def job_plan(job_id: int, snapshot: Callable[[], Mapping[str, Any]]) -> tuple[Config, Plan]:
    """A job's config and plan, loaded (``snapshot()``) and parsed once per process."""
    with _lock:
        cached = _plans.get(job_id)
        if cached is not None:
            _plans.move_to_end(job_id)
            return cached
    data = snapshot()
    config, preset = config_from_snapshot(data)
    result = (config, Plan(preset, stream_final=bool(data.get("stream_final"))))
    with _lock:
        _plans[job_id] = result
        while len(_plans) > _PLAN_CACHE:
            _plans.popitem(last=False)
    return result
