"""Who may see and change what. Checked here, in the service layer, not only at the API edge."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aima.db.models import Case, Role, User
from aima.errors import Forbidden


@dataclass(frozen=True)
class Actor:
    """The authenticated user a request or subscription acts for."""

    user_id: uuid.UUID
    email: str
    role: Role

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(user_id=user.id, email=user.email, role=user.role)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def can_read_case(actor: Actor, case: Case) -> bool:
    return actor.is_admin or case.owner_id == actor.user_id


def can_write_case(actor: Actor, case: Case) -> bool:
    return actor.role is not Role.GUEST and (actor.is_admin or case.owner_id == actor.user_id)


def ensure_writable(actor: Actor, case: Case) -> None:
    """For a case the actor may read: refuse if it may not change it."""
    if not can_write_case(actor, case):
        raise Forbidden("You may read this case but not change it.")


def require_writer(actor: Actor) -> None:
    """Guests only ever read."""
    if actor.role is Role.GUEST:
        raise Forbidden("Guests have read-only access.")
