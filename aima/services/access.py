"""Who may see and change what. Checked here, in the service layer, not only at the API edge.

A case belongs to its creator. The owner (or an administrator) may share it with other users as viewer or editor;
a guest account only ever reads, whatever it was shared as. Every read of a case, its media, jobs and results goes
through `CaseAccess`, and a case the actor may not read answers exactly like a missing one.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, ScalarSelect, exists, or_, select

from aima.db.models import Case, CaseMember, CaseRole, Role, User
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


class CaseAccess(enum.IntEnum):
    """What an actor may do with one case; each level includes the ones below it."""

    NONE = 0
    #: Read the case, its media, jobs and results.
    VIEWER = 1
    #: Also upload media and start analyses.
    EDITOR = 2
    #: Also share, unshare and delete: the owner and administrators.
    OWNER = 3


def case_access(actor: Actor, owner_id: uuid.UUID, member_role: CaseRole | str | None) -> CaseAccess:
    """The actor's access to a case with this owner, given the role the case is shared with the actor as."""
    if actor.is_admin:
        return CaseAccess.OWNER
    if actor.role is Role.GUEST:
        # A guest reads what is shared with it and nothing else, not even a case it created before a role change.
        return CaseAccess.NONE if member_role is None else CaseAccess.VIEWER
    if owner_id == actor.user_id:
        return CaseAccess.OWNER
    if member_role is None:
        return CaseAccess.NONE
    return CaseAccess.EDITOR if CaseRole(member_role) is CaseRole.EDITOR else CaseAccess.VIEWER


def member_role_of(actor: Actor) -> ScalarSelect[CaseRole]:
    """A column for queries over `Case`: the role the case is shared with the actor as (NULL when it is not)."""
    return (
        select(CaseMember.role)
        .where(CaseMember.case_id == Case.id, CaseMember.user_id == actor.user_id)
        .scalar_subquery()
    )


def readable_cases(actor: Actor) -> ColumnElement[bool]:
    """A filter over `Case`: the cases the actor may read."""
    if actor.is_admin:
        return Case.id.is_not(None)
    shared = exists().where(CaseMember.case_id == Case.id, CaseMember.user_id == actor.user_id)
    if actor.role is Role.GUEST:
        return shared  # guests read what is shared with them, nothing else
    return or_(Case.owner_id == actor.user_id, shared)


def ensure(access: CaseAccess, needed: CaseAccess, what: str) -> None:
    """For a case the actor may read: refuse an action that needs more than `access`."""
    if access < needed:
        raise Forbidden(f"You may read this case but not {what}.")


def require_writer(actor: Actor) -> None:
    """Guests only ever read."""
    if actor.role is Role.GUEST:
        raise Forbidden("Guests have read-only access.")
