"""Ending sessions at once: a denylist of access-token ids and a per-user "tokens issued before" mark, in Redis.

Access tokens are short-lived JWTs that the API checks without a database; these two Redis keys are what makes a
sign-out, a password change or an administrator's "end sessions" take effect on the very next request.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from redis.asyncio import Redis

from aima.errors import NotAuthenticated
from aima.security import TokenClaims


class SessionRevocations:
    def __init__(self, redis: Redis, prefix: str, token_lifetime_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lifetime_s = token_lifetime_s

    def _denied(self, jti: str) -> str:
        return f"{self._prefix}:revoked:jti:{jti}"

    def _before(self, user_id: uuid.UUID) -> str:
        return f"{self._prefix}:revoked:user:{user_id}"

    async def revoke_token(self, claims: TokenClaims) -> None:
        """End one session: its token id is refused until the token would have expired anyway."""
        remaining_s = int((claims.expires_at - datetime.now(UTC)).total_seconds()) + 1
        if remaining_s > 0:
            await self._redis.set(self._denied(claims.jti), b"1", ex=remaining_s)

    async def revoke_user(self, user_id: uuid.UUID) -> int:
        """End every session of a user: tokens issued before now are refused. Returns the mark (ms)."""
        now_ms = int(time.time() * 1000)
        await self._redis.set(self._before(user_id), str(now_ms), ex=self._lifetime_s + 60)
        return now_ms

    async def check(self, claims: TokenClaims) -> None:
        """Refuse a revoked token (one Redis round trip)."""
        denied, before = await self._redis.mget(self._denied(claims.jti), self._before(claims.user_id))
        if denied is not None or (before is not None and claims.issued_at_ms <= int(before)):
            raise NotAuthenticated("This session has ended; sign in again.")
