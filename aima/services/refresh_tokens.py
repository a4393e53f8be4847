"""Opaque refresh tokens: stored as SHA-256 only, replaced on every use, a family revoked when one is reused.

A sign-in starts a family. Exchanging a refresh token marks it used and issues its successor in the same family;
presenting a used token again means two parties hold it (one stole it), so the whole family is revoked and the
caller must also end the family's access tokens (`SessionRevocations.revoke_session`).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import RefreshToken, User
from aima.errors import NotAuthenticated

TOKEN_PREFIX = "aimar_"  # noqa: S105 - marks the kind of token, so a leaked one is recognisable in scanners


class RefreshTokenReused(NotAuthenticated):
    """A rotated refresh token came back: its family has been revoked."""

    def __init__(self, family_id: uuid.UUID, user_id: uuid.UUID) -> None:
        super().__init__("This session has ended; sign in again.")
        self.family_id = family_id
        self.user_id = user_id


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    family_id: uuid.UUID
    expires_at: datetime


def token_hash(token: str) -> str:
    """What is stored: the token has 256 random bits, so a plain SHA-256 cannot be reversed."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new(
    user_id: uuid.UUID, family_id: uuid.UUID, lifetime: timedelta, client_address: str | None
) -> tuple[RefreshToken, IssuedRefreshToken]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    row = RefreshToken(
        id=uuid.uuid4(),
        family_id=family_id,
        user_id=user_id,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + lifetime,
        client_address=client_address,
    )
    return row, IssuedRefreshToken(token=token, family_id=family_id, expires_at=row.expires_at)


async def start_family(
    *, session: AsyncSession, user_id: uuid.UUID, lifetime: timedelta, client_address: str | None
) -> IssuedRefreshToken:
    """A new sign-in: the first refresh token of a new family. The user's expired tokens go (spent ones are kept
    until they expire, to recognise their reuse)."""
    await session.execute(
        delete(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.expires_at < datetime.now(UTC))
    )
    row, issued = _new(user_id, uuid.uuid4(), lifetime, client_address)
    session.add(row)
    await session.commit()
    return issued


async def rotate(
    *, session: AsyncSession, token: str, lifetime: timedelta, client_address: str | None
) -> tuple[User, IssuedRefreshToken]:
    """Exchange a refresh token for its successor; the user it belongs to must still be active."""
    now = datetime.now(UTC)
    stored = (
        await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == token_hash(token.strip())).with_for_update()
        )
    ).scalar_one_or_none()
    if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
        raise NotAuthenticated("Invalid or expired refresh token.")
    if stored.used_at is not None:
        await revoke_family(session=session, family_id=stored.family_id)
        raise RefreshTokenReused(stored.family_id, stored.user_id)
    user = await session.get(User, stored.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("Invalid or expired refresh token.")
    stored.used_at = now
    row, issued = _new(user.id, stored.family_id, lifetime, client_address)
    session.add(row)
    await session.commit()
    return user, issued


async def revoke_family(*, session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    await session.commit()


async def revoke_user(*, session: AsyncSession, user_id: uuid.UUID) -> None:
    """End every sign-in of a user: no refresh token of theirs is accepted again."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    await session.commit()
