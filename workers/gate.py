"""Limits every worker shares through Redis, checked before a provider call.

Per model: at most ``max_concurrency`` calls in flight (a sorted set of leases,
so a killed worker's slot expires), ``rpm`` requests and ``tpm`` tokens a
minute (the ``limits`` library's sliding window). Per provider: a circuit
breaker that opens after ``breaker_threshold`` consecutive failures and lets
one probe through after ``breaker_reset_s``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis import Redis

from pipeline.errors import ProviderError, ProviderTimeout, ProviderUnavailable
from pipeline.specs import ModelSpec, ProviderSpec

# A slot that frees within this is waited for in the thread (a call takes about this long,
# so a slot usually frees in time); a longer wait goes back through Celery.
INLINE_WAIT_S = 3.0
POLL_S = 0.01

# KEYS[1]: the model's lease set. ARGV: limit, lease seconds, token. Server time avoids skew.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Permit:
    key: str | None
    token: str


class Gate:
    def __init__(self, redis: Redis, url: str):
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        storage = RedisStorage(url, connection_pool=redis.connection_pool, key_prefix="moa-limits")
        self.rates = SlidingWindowCounterRateLimiter(storage)
        self._dirty: set[str] = set()  # providers whose breaker has state in Redis

    # --- acquiring --------------------------------------------------------------------------

    def enter(self, provider: ProviderSpec, model: ModelSpec, tokens: int) -> Permit | float:
        """A permit to call now, or the seconds to wait before trying again.

        An open circuit is a wait, not a failed attempt: a provider that is down for an
        hour delays a batch by an hour instead of failing it. Only the half-open probe,
        a real request, counts against its call's attempts.
        """
        wait = self.breaker_wait(provider)
        if wait > 0:
            return wait
        permit = self._slot(provider, model)
        if isinstance(permit, float):
            return permit
        wait = self._rates_wait(model, tokens)
        if wait > 0:
            self.leave(permit)
            return wait
        return permit

    def leave(self, permit: Permit) -> None:
        if permit.key is not None:
            self.redis.zrem(permit.key, permit.token)

    def _slot(self, provider: ProviderSpec, model: ModelSpec) -> Permit | float:
        if model.max_concurrency <= 0:
            return Permit(None, "")
        key, token = f"moa:inflight:{provider.name}:{model.model}", uuid.uuid4().hex
        lease = provider.timeout_s + 30
        deadline = time.monotonic() + INLINE_WAIT_S
        while True:
            if self._acquire(keys=[key], args=[model.max_concurrency, lease, token]):
                return Permit(key, token)
            if time.monotonic() >= deadline:
                return INLINE_WAIT_S
            time.sleep(POLL_S)

    def _rates_wait(self, model: ModelSpec, tokens: int) -> float:
        checks = []
        if model.rpm > 0:
            checks.append(("rpm", RateLimitItemPerMinute(model.rpm), 1))
        if model.tpm > 0:
            checks.append(("tpm", RateLimitItemPerMinute(model.tpm), min(tokens, model.tpm)))
        ids = (model.provider, model.model)
        # Test every window before taking from any, so a refusal costs no request budget.
        for name, item, cost in checks:
            if not self.rates.test(item, *ids, name, cost=cost):
                stats = self.rates.get_window_stats(item, *ids, name)
                return max(0.1, stats.reset_time - time.time())
        for name, item, cost in checks:
            self.rates.hit(item, *ids, name, cost=cost)
        return 0.0

    # --- the circuit breaker ----------------------------------------------------------------

    def _breaker_key(self, provider: ProviderSpec) -> str:
        return f"moa:breaker:{provider.name}"

    def breaker_wait(self, provider: ProviderSpec) -> float:
        if provider.breaker_threshold <= 0:
            return 0.0
        state = self.redis.hmget(self._breaker_key(provider), "open_until", "failures")
        if any(state):
            self._dirty.add(provider.name)
        open_until = float(state[0] or 0)
        if open_until == 0:
            return 0.0
        remaining = open_until - time.time()
        if remaining > 0:
            return remaining
        # Half-open: one probe at a time until it closes or opens the breaker again.
        probe = self.redis.set(
            self._breaker_key(provider) + ":probe", "1", nx=True, ex=int(provider.timeout_s) + 5
        )
        return 0.0 if probe else 1.0

    def succeeded(self, provider: ProviderSpec) -> None:
        # Only a provider seen with recorded failures needs resetting: no round trip otherwise.
        if provider.breaker_threshold > 0 and provider.name in self._dirty:
            key = self._breaker_key(provider)
            self.redis.delete(key, key + ":probe")
            self._dirty.discard(provider.name)

    def failed(self, provider: ProviderSpec, error: ProviderError) -> None:
        """Only signs of an unhealthy provider count; a 429 or a bad request does not."""
        if provider.breaker_threshold <= 0 or not isinstance(
            error, ProviderUnavailable | ProviderTimeout
        ):
            return
        key = self._breaker_key(provider)
        self._dirty.add(provider.name)
        failures = int(self.redis.hincrby(key, "failures", 1))
        if failures >= provider.breaker_threshold:
            self.redis.hset(key, "open_until", time.time() + provider.breaker_reset_s)
            self.redis.delete(key + ":probe")
