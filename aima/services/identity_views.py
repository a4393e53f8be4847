"""Reading the persons and voices of a case: clusters with their first members, a media item's members, and the
corrections users made."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import IdentityCluster, IdentityCorrection, IdentityKind, IdentityMember, Media
from aima.errors import InvalidInput, NotFound
from aima.services.access import Actor, CaseAccess
from aima.services.identities import ensure_case_access


@dataclass(frozen=True)
class MemberView:
    member: IdentityMember
    media: Media


@dataclass(frozen=True)
class ClusterView:
    cluster: IdentityCluster
    member_count: int
    media_count: int
    #: The first members, in upload order of their media and time within it.
    members: list[MemberView]


async def clusters_of_case(
    *,
    session: AsyncSession,
    actor: Actor,
    case_id: uuid.UUID,
    kind: IdentityKind,
    first: int = 100,
    members_per_cluster: int = 20,
) -> list[ClusterView]:
    """The case's persons or voices, the most frequent first, each with its first members."""
    await ensure_case_access(session, actor, case_id, NotFound("Case", case_id), CaseAccess.VIEWER)
    if not 1 <= first <= 1000 or not 0 <= members_per_cluster <= 1000:
        raise InvalidInput("first must be between 1 and 1000, membersPerCluster between 0 and 1000.")
    where = (IdentityCluster.case_id == case_id, IdentityCluster.kind == kind)
    return await _views(session, where, first, members_per_cluster)


async def cluster_view(session: AsyncSession, cluster_id: uuid.UUID, members_per_cluster: int = 20) -> ClusterView:
    """One cluster with its first members (for the answer to a correction, which checked access)."""
    views = await _views(session, (IdentityCluster.id == cluster_id,), 1, members_per_cluster)
    if not views:
        raise NotFound("Cluster", cluster_id)
    return views[0]


async def _views(
    session: AsyncSession, where: Sequence[ColumnElement[bool]], first: int, members_per_cluster: int
) -> list[ClusterView]:
    members = func.count(IdentityMember.id)
    query = (
        select(IdentityCluster, members, func.count(distinct(IdentityMember.media_id)))
        .join(IdentityMember, IdentityMember.cluster_id == IdentityCluster.id)
        .where(*where)
        .group_by(IdentityCluster.id)
        .order_by(members.desc(), IdentityCluster.number)
        .limit(first)
    )
    clusters = [(row[0], int(row[1]), int(row[2])) for row in await session.execute(query)]
    shown: dict[uuid.UUID, list[MemberView]] = defaultdict(list)
    if clusters and members_per_cluster:
        order = (Media.created_at, Media.id, IdentityMember.start_s, IdentityMember.key)
        rank = func.row_number().over(partition_by=IdentityMember.cluster_id, order_by=order).label("rank")
        ranked = (
            select(IdentityMember.id, rank)
            .join(Media, Media.id == IdentityMember.media_id)
            .where(IdentityMember.cluster_id.in_([c.id for c, _, _ in clusters]))
            .subquery()
        )
        rows = await session.execute(
            select(IdentityMember, Media)
            .join(ranked, ranked.c.id == IdentityMember.id)
            .join(Media, Media.id == IdentityMember.media_id)
            .where(ranked.c.rank <= members_per_cluster)
            .order_by(ranked.c.rank)
        )
        for member, media in rows.tuples():
            shown[member.cluster_id].append(MemberView(member, media))
    return [ClusterView(cluster, count, media, shown[cluster.id]) for cluster, count, media in clusters]


async def member_view(session: AsyncSession, member_id: uuid.UUID) -> MemberView:
    """A member with its media (for the answer to a correction, which checked access)."""
    row = (
        await session.execute(
            select(IdentityMember, Media)
            .join(Media, Media.id == IdentityMember.media_id)
            .where(IdentityMember.id == member_id)
        )
    ).first()
    if row is None:
        raise NotFound("Member", member_id)
    return MemberView(row[0], row[1])


async def identities_of_media(
    session: AsyncSession, media_id: uuid.UUID, kind: IdentityKind
) -> dict[tuple[str, str], tuple[IdentityMember, IdentityCluster]]:
    """The media item's members of this kind and their clusters, by (analyzer, key). The caller checked access."""
    query = (
        select(IdentityMember, IdentityCluster)
        .join(IdentityCluster, IdentityCluster.id == IdentityMember.cluster_id)
        .where(IdentityMember.media_id == media_id, IdentityMember.kind == kind)
    )
    return {(m.analyzer, m.key): (m, c) for m, c in (await session.execute(query)).tuples()}


async def corrections_of_case(
    *, session: AsyncSession, actor: Actor, case_id: uuid.UUID, first: int = 50
) -> list[IdentityCorrection]:
    """Users' corrections of the case's persons and voices, newest first."""
    await ensure_case_access(session, actor, case_id, NotFound("Case", case_id), CaseAccess.VIEWER)
    query = (
        select(IdentityCorrection)
        .where(IdentityCorrection.case_id == case_id)
        .order_by(IdentityCorrection.id.desc())
        .limit(min(max(first, 1), 500))
    )
    return list(await session.scalars(query))
