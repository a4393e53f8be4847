"""Accounts: registration and login. The full account system (sessions, throttling, admin) builds on this."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from importlib import resources

from argon2 import PasswordHasher
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from aima.db.models import Role, User
from aima.errors import Conflict, Forbidden, InvalidCredentials, InvalidInput, NotAuthenticated
from aima.security import verify_password
from aima.services.access import Actor
from aima.settings import Registration

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidInput("Enter a valid email address.")
    return email


def check_password_policy(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"Passwords must have between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH} characters.")
    if password.lower() in common_passwords():
        raise InvalidInput("This password is among the most common ones; choose another.")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (shipped in aima/data), read once."""
    text = resources.files("aima.data").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


async def create_user(
    *,
    session: AsyncSession,
    hasher: PasswordHasher,
    email: str,
    password: str,
    role: Role = Role.USER,
    pending_approval: bool = False,
) -> User:
    email = normalize_email(email)
    check_password_policy(password)
    password_hash = await asyncio.to_thread(hasher.hash, password)
    user = User(
        id=uuid.uuid4(),
        email=email,
        password_hash=password_hash,
        role=role,
        is_active=not pending_approval,
        pending_approval=pending_approval,
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict("This email cannot be registered.") from exc
    return user


async def register(
    *, session: AsyncSession, hasher: PasswordHasher, email: str, password: str, registration: Registration
) -> User | None:
    """Self-service registration as the deployment allows it.

    Open: the account is active at once. Approval: it waits, inactive, for an administrator; the answer is the same
    whether or not the email already had an account (None for both), so registration cannot probe for emails.
    """
    if registration is Registration.CLOSED:
        raise Forbidden("Registration is closed; ask an administrator for an account.")
    if registration is Registration.OPEN:
        return await create_user(session=session, hasher=hasher, email=email, password=password)
    try:
        return await create_user(session=session, hasher=hasher, email=email, password=password, pending_approval=True)
    except Conflict:
        return None


class Authenticator:
    """Checks credentials in roughly constant time, so answers do not reveal which emails exist."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher
        self._dummy_hash: str | None = None

    async def authenticate(self, *, session: AsyncSession, email: str, password: str) -> User:
        try:
            email = normalize_email(email)
        except InvalidInput:
            email = ""
        user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
        if user is None:
            if self._dummy_hash is None:
                self._dummy_hash = await asyncio.to_thread(self._hasher.hash, uuid.uuid4().hex)
            await asyncio.to_thread(verify_password, self._hasher, self._dummy_hash, password)
            raise InvalidCredentials()
        ok = await asyncio.to_thread(verify_password, self._hasher, user.password_hash, password)
        if not ok or not user.is_active:
            raise InvalidCredentials()
        return user


async def active_user(*, session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("Invalid or expired access token.")
    return user


_ACTOR_QUERY = select(User.id, User.email, User.role).where(User.id == bindparam("user_id"), User.is_active.is_(True))


async def active_actor(*, engine: AsyncEngine, user_id: uuid.UUID) -> Actor:
    """The acting user of a request, read on every request (a deactivated account stops at once), lean."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")  # one statement: no BEGIN and ROLLBACK around it
        row = (await conn.execute(_ACTOR_QUERY, {"user_id": user_id})).first()
    if row is None:
        raise NotAuthenticated("Invalid or expired access token.")
    return Actor(user_id=row.id, email=row.email, role=Role(row.role))


async def change_password(
    *, session: AsyncSession, hasher: PasswordHasher, authenticator: Authenticator, actor: Actor, current: str, new: str
) -> None:
    """Replace the actor's password after checking the current one; the caller ends the other sessions."""
    user = await authenticator.authenticate(session=session, email=actor.email, password=current)
    check_password_policy(new)
    if new == current:
        raise InvalidInput("The new password must differ from the current one.")
    user.password_hash = await asyncio.to_thread(hasher.hash, new)
    await session.commit()


async def count_admins(*, session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).where(User.role == Role.ADMIN)) or 0)
