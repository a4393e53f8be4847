"""Cases: the containers of media, jobs and results, and who they are shared with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import Case, CaseMember, CaseRole, Role, User
from aima.errors import InvalidInput, NotFound
from aima.services.access import Actor, CaseAccess, case_access, ensure, member_role_of, readable_cases, require_writer

_ACTIONS = {CaseAccess.EDITOR: "change it", CaseAccess.OWNER: "share or delete it"}


async def create_case(*, session: AsyncSession, actor: Actor, title: str) -> Case:
    require_writer(actor)
    title = title.strip()
    if not 1 <= len(title) <= 300:
        raise InvalidInput("A case title must have between 1 and 300 characters.")
    case = Case(id=uuid.uuid4(), title=title, owner_id=actor.user_id)
    session.add(case)
    await session.commit()
    return case


async def list_cases(*, session: AsyncSession, actor: Actor) -> list[tuple[Case, CaseAccess]]:
    """The cases the actor owns or that are shared with it (every case, for an administrator), newest first,
    each with what the actor may do with it."""
    query = select(Case, member_role_of(actor)).where(readable_cases(actor)).order_by(Case.created_at.desc(), Case.id)
    return [(case, case_access(actor, case.owner_id, role)) for case, role in await session.execute(query)]


async def case_with_access(*, session: AsyncSession, actor: Actor, case_id: uuid.UUID) -> tuple[Case, CaseAccess]:
    """The case and what the actor may do with it; a missing and an unreadable case give the same answer."""
    row = (await session.execute(select(Case, member_role_of(actor)).where(Case.id == case_id))).first()
    access = case_access(actor, row[0].owner_id, row[1]) if row is not None else CaseAccess.NONE
    if row is None or access is CaseAccess.NONE:
        raise NotFound("Case", case_id)
    case: Case = row[0]
    return case, access


async def get_case(
    *, session: AsyncSession, actor: Actor, case_id: uuid.UUID, needed: CaseAccess = CaseAccess.VIEWER
) -> Case:
    """The case, if the actor may do what `needed` allows. Visibility is checked first, so ids cannot be probed."""
    case, access = await case_with_access(session=session, actor=actor, case_id=case_id)
    ensure(access, needed, _ACTIONS.get(needed, "do this"))
    return case


@dataclass(frozen=True)
class Membership:
    user_id: uuid.UUID
    email: str
    role: CaseRole


async def members_of_case(*, session: AsyncSession, case_id: uuid.UUID) -> list[Membership]:
    """Who a case is shared with (the caller has checked that the actor may read the case)."""
    query = (
        select(CaseMember.user_id, User.email, CaseMember.role)
        .join(User, User.id == CaseMember.user_id)
        .where(CaseMember.case_id == case_id)
        .order_by(User.email)
    )
    return [Membership(user_id=r.user_id, email=r.email, role=CaseRole(r.role)) for r in await session.execute(query)]


async def share_case(
    *, session: AsyncSession, actor: Actor, case_id: uuid.UUID, email: str, role: CaseRole
) -> tuple[Membership, CaseRole | None]:
    """Share a case with the account of `email` as viewer or editor; returns the membership and the role it had."""
    case = await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.OWNER)
    user = (await session.execute(select(User).where(User.email == email.strip().lower()))).scalar_one_or_none()
    if user is None or not user.is_active:
        raise NotFound("User", email)
    if user.id == case.owner_id:
        raise InvalidInput("The owner of a case already has every right to it.")
    if user.role is Role.GUEST and role is CaseRole.EDITOR:
        raise InvalidInput("Guest accounts only read: share with them as viewer.")
    previous = await session.scalar(
        select(CaseMember.role).where(CaseMember.case_id == case.id, CaseMember.user_id == user.id)
    )
    statement = insert(CaseMember).values(case_id=case.id, user_id=user.id, role=role, granted_by=actor.user_id)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[CaseMember.case_id, CaseMember.user_id],
            set_={"role": role, "granted_by": actor.user_id},
        )
    )
    await session.commit()
    return Membership(user_id=user.id, email=user.email, role=role), CaseRole(previous) if previous else None


async def unshare_case(*, session: AsyncSession, actor: Actor, case_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Stop sharing a case with a user (members may leave a case themselves); False when it was not shared."""
    needed = CaseAccess.VIEWER if user_id == actor.user_id else CaseAccess.OWNER
    case = await get_case(session=session, actor=actor, case_id=case_id, needed=needed)
    removed = await session.execute(
        delete(CaseMember).where(CaseMember.case_id == case.id, CaseMember.user_id == user_id)
    )
    await session.commit()
    return bool(getattr(removed, "rowcount", 0))
