"""Slows down password guessing: failed sign-ins per account and per client address, counted in Redis.

Past a few free failures, each further attempt must wait, the wait doubling up to a cap. The account's cap is short
(a minute), so an attacker cannot lock its owner out for long; the address's is longer. Accounts are keyed by a
hash of the email, so Redis holds no addresses of people.
"""

from __future__ import annotations

import hashlib
import math

from redis.asyncio import Redis

from aima.errors import RateLimited
from aima.settings import AuthSettings


class LoginThrottle:
    def __init__(self, redis: Redis, prefix: str, settings: AuthSettings) -> None:
        self._redis = redis
        self._prefix = prefix
        self._settings = settings

    def _keys(self, email: str, address: str | None) -> list[tuple[str, int, float]]:
        s = self._settings
        account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        keys = [
            (
                f"{self._prefix}:throttle:account:{account}",
                s.throttle_free_failures_account,
                s.throttle_max_delay_account_s,
            )
        ]
        if address:
            keys.append(
                (
                    f"{self._prefix}:throttle:address:{address}",
                    s.throttle_free_failures_address,
                    s.throttle_max_delay_address_s,
                )
            )
        return keys

    async def check(self, email: str, address: str | None) -> None:
        """Refuse the attempt, without looking at the password, while the account or the address must wait."""
        waits = [await self._redis.pttl(f"{key}:blocked") for key, _, _ in self._keys(email, address)]
        longest = max(waits, default=-2)
        if longest > 0:
            raise RateLimited(math.ceil(longest / 1000))

    async def failed(self, email: str, address: str | None) -> None:
        for key, free, cap in self._keys(email, address):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(f"{key}:failures")
                pipe.expire(f"{key}:failures", self._settings.throttle_window_s)
                failures, _ = await pipe.execute()
            if failures > free:
                delay = min(self._settings.throttle_base_delay_s * 2 ** (failures - free - 1), cap)
                await self._redis.set(f"{key}:blocked", b"1", px=max(1, int(delay * 1000)))

    async def succeeded(self, email: str) -> None:
        """A correct password clears the account's count (not the address's: one success must not reset a
        guessing run from that address)."""
        key = self._keys(email, None)[0][0]
        await self._redis.delete(f"{key}:failures", f"{key}:blocked")
