"""Cases: the containers of media, jobs and results."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import Case
from aima.errors import InvalidInput, NotFound
from aima.services.access import Actor, can_read_case, ensure_writable, require_writer


async def create_case(*, session: AsyncSession, actor: Actor, title: str) -> Case:
    require_writer(actor)
    title = title.strip()
    if not 1 <= len(title) <= 300:
        raise InvalidInput("A case title must have between 1 and 300 characters.")
    case = Case(id=uuid.uuid4(), title=title, owner_id=actor.user_id)
    session.add(case)
    await session.commit()
    return case


async def list_cases(*, session: AsyncSession, actor: Actor) -> list[Case]:
    query = select(Case).order_by(Case.created_at.desc(), Case.id)
    if not actor.is_admin:
        query = query.where(Case.owner_id == actor.user_id)
    return list((await session.execute(query)).scalars())


async def get_case(*, session: AsyncSession, actor: Actor, case_id: uuid.UUID) -> Case:
    """The case, if the actor may read it; a missing and a forbidden case give the same answer."""
    case = await session.get(Case, case_id)
    if case is None or not can_read_case(actor, case):
        raise NotFound("Case", case_id)
    return case


async def get_writable_case(*, session: AsyncSession, actor: Actor, case_id: uuid.UUID) -> Case:
    """The case, if the actor may change it. Visibility is checked first, so ids cannot be probed."""
    case = await get_case(session=session, actor=actor, case_id=case_id)
    ensure_writable(actor, case)
    return case
