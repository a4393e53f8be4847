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

    def _session(self, session_id: str) -> str:
        return f"{self._prefix}:revoked:sid:{session_id}"

    async def revoke_token(self, claims: TokenClaims) -> None:
        """End one session: its token id is refused until the token would have expired anyway."""
        remaining_s = int((claims.expires_at - datetime.now(UTC)).total_seconds()) + 1
        if remaining_s > 0:
            await self._redis.set(self._denied(claims.jti), b"1", ex=remaining_s)

    async def revoke_session(self, session_id: uuid.UUID | str) -> None:
        """End one sign-in: every access token of its refresh-token family is refused."""
        await self._redis.set(self._session(str(session_id)), b"1", ex=self._lifetime_s + 60)

    async def revoke_user(self, user_id: uuid.UUID) -> int:
        """End every session of a user: tokens issued before now are refused. Returns the mark (ms)."""
        now_ms = int(time.time() * 1000)
        await self._redis.set(self._before(user_id), str(now_ms), ex=self._lifetime_s + 60)
        return now_ms

    async def check(self, claims: TokenClaims) -> None:
        """Refuse a revoked token (one Redis round trip)."""
        keys = [self._denied(claims.jti), self._before(claims.user_id)]
        if claims.session_id:
            keys.append(self._session(claims.session_id))
        denied, before, *session_ended = await self._redis.mget(keys)
        if denied is not None or any(session_ended) or (before is not None and claims.issued_at_ms <= int(before)):
            raise NotAuthenticated("This session has ended; sign in again.")
