"""What administrators do to accounts: find them, change their role, deactivate them, end their sessions."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import Role, User
from aima.errors import Forbidden, InvalidInput, NotFound
from aima.services.access import Actor


def require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("Only administrators may manage accounts.")


async def search_users(
    *, session: AsyncSession, actor: Actor, search: str | None = None, pending: bool | None = None, limit: int = 50
) -> list[User]:
    """Accounts whose email contains `search`; with `pending`, only those (not) waiting for approval."""
    require_admin(actor)
    query = select(User).order_by(User.email).limit(min(max(limit, 1), 500))
    if pending is not None:
        query = query.where(User.pending_approval.is_(pending))
    if search:
        pattern = "%" + search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(User.email.like(pattern, escape="\\")))
    return list((await session.execute(query)).scalars())


async def _user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("User", user_id)
    return user


async def set_role(*, session: AsyncSession, actor: Actor, user_id: uuid.UUID, role: Role) -> tuple[User, Role]:
    """Change a user's role; returns the user and the role it had. Admins cannot demote themselves."""
    require_admin(actor)
    if user_id == actor.user_id and role is not Role.ADMIN:
        raise InvalidInput("Administrators cannot take their own admin role; ask another administrator.")
    user = await _user(session, user_id)
    previous = user.role
    user.role = role
    await session.commit()
    return user, previous


async def approve(*, session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    """Let a registration that waits for approval in: the account becomes active."""
    require_admin(actor)
    user = await _user(session, user_id)
    if not user.pending_approval:
        raise InvalidInput("This account is not waiting for approval.")
    user.pending_approval = False
    user.is_active = True
    await session.commit()
    return user


async def set_active(*, session: AsyncSession, actor: Actor, user_id: uuid.UUID, active: bool) -> User:
    require_admin(actor)
    if user_id == actor.user_id and not active:
        raise InvalidInput("Administrators cannot deactivate themselves.")
    user = await _user(session, user_id)
    if active and user.pending_approval:
        raise InvalidInput("This account waits for approval: approve it instead.")
    user.is_active = active
    await session.commit()
    return user
