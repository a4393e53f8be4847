"""Sign-in sessions: an access token plus a refresh-token family, and ending them.

Ending a session has two halves that must both happen: the refresh tokens in PostgreSQL (no new access tokens) and
the access tokens already out (Redis, checked on every request). This module keeps the two together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from aima.db.models import User
from aima.resources import Resources
from aima.security import AccessToken, TokenClaims, issue_access_token
from aima.services import refresh_tokens
from aima.services.refresh_tokens import IssuedRefreshToken, RefreshTokenReused


@dataclass(frozen=True)
class SignedIn:
    user: User
    access: AccessToken
    refresh: IssuedRefreshToken


def _lifetime(resources: Resources) -> timedelta:
    return timedelta(days=resources.settings.auth.refresh_token_days)


async def sign_in(
    resources: Resources, user: User, *, client_address: str | None, now: datetime | None = None
) -> SignedIn:
    """Start a session: a new refresh-token family and an access token that names it."""
    async with resources.sessions() as session:
        refresh = await refresh_tokens.start_family(
            session=session, user_id=user.id, lifetime=_lifetime(resources), client_address=client_address
        )
    access = issue_access_token(resources.settings.auth, user.id, session_id=refresh.family_id, now=now)
    return SignedIn(user=user, access=access, refresh=refresh)


async def refresh_session(resources: Resources, token: str, *, client_address: str | None) -> SignedIn:
    """Exchange a refresh token for a new pair. A reused token ends its family's access tokens too, then raises."""
    try:
        async with resources.sessions() as session:
            user, refresh = await refresh_tokens.rotate(
                session=session, token=token, lifetime=_lifetime(resources), client_address=client_address
            )
    except RefreshTokenReused as reused:
        await resources.revocations.revoke_session(reused.family_id)
        raise
    access = issue_access_token(resources.settings.auth, user.id, session_id=refresh.family_id)
    return SignedIn(user=user, access=access, refresh=refresh)


async def end_session(resources: Resources, claims: TokenClaims) -> None:
    """Sign out: this access token and, when it names one, its refresh-token family."""
    await resources.revocations.revoke_token(claims)
    if claims.session_id:
        family = uuid.UUID(claims.session_id)
        await resources.revocations.revoke_session(family)
        async with resources.sessions() as session:
            await refresh_tokens.revoke_family(session=session, family_id=family)


async def end_all_sessions(resources: Resources, user_id: uuid.UUID) -> int:
    """End every session of a user, on every device; returns the revocation mark (ms) new tokens must follow."""
    async with resources.sessions() as session:
        await refresh_tokens.revoke_user(session=session, user_id=user_id)
    return await resources.revocations.revoke_user(user_id)
