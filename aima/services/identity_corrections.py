"""Users' corrections of the persons and voices of a case: rename, merge, split, move, and "not this person".

Each is an editor's statement that automation (`aima.services.identities`) keeps from then on: members a user placed
stay where they are, and a member excluded from a cluster is never placed with that person again. Every correction
takes the lock of its case and kind, so that it never interleaves with a clustering run, and is recorded
(`IdentityCorrection`) as provenance: which groupings are a person's judgement rather than the model's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import (
    Assignment,
    IdentityCluster,
    IdentityExclusion,
    IdentityKind,
    IdentityMember,
    Media,
)
from aima.errors import AimaError, InvalidInput, NotFound
from aima.resources import Resources
from aima.services.access import Actor
from aima.services.identities import (
    cluster_media_locked,
    ensure_case_access,
    face_tokens,
    lock_identities,
    record_correction,
    settle,
)


class IdentityConflict(AimaError):
    """A correction that would put two faces of one keyframe into one person."""

    code = "IDENTITY_CONFLICT"


async def _locked_cluster(session: AsyncSession, actor: Actor, cluster_id: uuid.UUID) -> IdentityCluster:
    """The cluster, checked for the actor (editor), under its case's lock, as it is once the lock is held."""
    cluster = await session.get(IdentityCluster, cluster_id)
    if cluster is None:
        raise NotFound("Cluster", cluster_id)
    await ensure_case_access(session, actor, cluster.case_id, NotFound("Cluster", cluster_id))
    await lock_identities(session, cluster.case_id, cluster.kind)
    cluster = await session.get(IdentityCluster, cluster_id, populate_existing=True)
    if cluster is None:  # merged away while we waited
        raise NotFound("Cluster", cluster_id)
    return cluster


async def _locked_member(session: AsyncSession, actor: Actor, member_id: uuid.UUID) -> IdentityMember:
    member = await session.get(IdentityMember, member_id)
    if member is None:
        raise NotFound("Member", member_id)
    await ensure_case_access(session, actor, member.case_id, NotFound("Member", member_id))
    await lock_identities(session, member.case_id, member.kind)
    member = await session.get(IdentityMember, member_id, populate_existing=True)
    if member is None:
        raise NotFound("Member", member_id)
    return member


async def _case_cluster(session: AsyncSession, cluster_id: uuid.UUID, case_id: uuid.UUID) -> IdentityCluster:
    """A cluster named beside another one: it must be of the same case (else it does not exist for this call)."""
    cluster = await session.get(IdentityCluster, cluster_id, populate_existing=True)
    if cluster is None or cluster.case_id != case_id:
        raise NotFound("Cluster", cluster_id)
    return cluster


def _clean_label(label: str | None) -> str | None:
    cleaned = " ".join("".join(ch for ch in (label or "") if ch.isprintable()).split())
    if len(cleaned) > 200:
        raise InvalidInput("A label must have at most 200 characters.")
    return cleaned or None


async def rename_cluster(
    *, resources: Resources, actor: Actor, cluster_id: uuid.UUID, label: str | None
) -> IdentityCluster:
    """Name a person or voice ("Alice"); an empty label gives back the number ("Person 3")."""
    cleaned = _clean_label(label)
    async with resources.sessions() as session, session.begin():
        cluster = await _locked_cluster(session, actor, cluster_id)
        before = cluster.label
        cluster.label, cluster.labelled_by, cluster.updated_at = cleaned, actor.user_id, datetime.now(UTC)
        record_correction(
            session,
            cluster.case_id,
            cluster.kind,
            "rename",
            actor,
            {"cluster_id": str(cluster.id), "from": before, "to": cleaned},
        )
    return cluster


async def _members(session: AsyncSession, cluster_ids: Iterable[uuid.UUID]) -> list[IdentityMember]:
    query = select(IdentityMember).where(IdentityMember.cluster_id.in_(list(cluster_ids)))
    return list(await session.scalars(query.order_by(IdentityMember.media_id, IdentityMember.key)))


async def _refuse_frame_clash(session: AsyncSession, members: Iterable[IdentityMember]) -> None:
    """Two faces of one keyframe in one cluster would be one person seen twice in one picture: refused."""
    seen: dict[str, IdentityMember] = {}
    for member in members:
        for token in face_tokens(member):
            other = seen.setdefault(token, member)
            if other.id != member.id:
                filename = await session.scalar(select(Media.filename).where(Media.id == member.media_id))
                where = f"keyframe {member.keyframe}" if member.keyframe is not None else f"{member.start_s} s"
                raise IdentityConflict(
                    f"Faces {other.key} and {member.key} are both in {where} of {filename!r}: two faces of one "
                    "picture are two people. Move one of them out first."
                )


async def merge_clusters(
    *, resources: Resources, actor: Actor, into_id: uuid.UUID, from_ids: Sequence[uuid.UUID]
) -> IdentityCluster:
    """Make several clusters one (a user says they are the same person): the members of `from_ids` join `into_id`,
    placed by the user from then on; exclusions from the merged clusters now hold for `into_id`."""
    sources = list(dict.fromkeys(c for c in from_ids if c != into_id))
    if not sources:
        raise InvalidInput("Name at least one other cluster to merge.")
    now = datetime.now(UTC)
    async with resources.sessions() as session, session.begin():
        into = await _locked_cluster(session, actor, into_id)
        merged = [await _case_cluster(session, cluster_id, into.case_id) for cluster_id in sources]
        if any(c.kind is not into.kind or c.analyzer != into.analyzer for c in merged):
            raise InvalidInput("Only clusters of one kind, made by one analyzer, can be merged.")
        members = await _members(session, [into.id, *sources])
        if into.kind is IdentityKind.FACE:
            await _refuse_frame_clash(session, members)
        moving = [m for m in members if m.cluster_id != into.id]
        for member in moving:
            member.cluster_id, member.assigned_by = into.id, Assignment.USER
            member.assigned_by_user, member.assigned_at, member.similarity = actor.user_id, now, None
        await session.flush()
        # A member excluded from one of the merged clusters is now excluded from the merged whole, unless it is in
        # it: the user's latest statement wins.
        await session.execute(
            insert(IdentityExclusion)
            .from_select(
                ["member_id", "cluster_id", "created_by"],
                select(IdentityExclusion.member_id, literal(into.id), IdentityExclusion.created_by).where(
                    IdentityExclusion.cluster_id.in_(sources)
                ),
            )
            .on_conflict_do_nothing()
        )
        await session.execute(
            delete(IdentityExclusion).where(
                IdentityExclusion.cluster_id == into.id,
                IdentityExclusion.member_id.in_([m.id for m in members]),
            )
        )
        if into.label is None:
            into.label = next((c.label for c in merged if c.label), None)
        into.updated_at = now
        await session.execute(delete(IdentityCluster).where(IdentityCluster.id.in_(sources)))
        record_correction(
            session,
            into.case_id,
            into.kind,
            "merge",
            actor,
            {
                "into": str(into.id),
                "from": [str(c) for c in sources],
                "labels": [c.label for c in merged],
                "members": len(moving),
            },
        )
    return into


async def split_cluster(
    *, resources: Resources, actor: Actor, cluster_id: uuid.UUID, member_ids: Sequence[uuid.UUID]
) -> IdentityCluster:
    """Take members out of a cluster into a new one (a user says they are someone else): placed by the user, and
    never put back into the cluster they left."""
    wanted = list(dict.fromkeys(member_ids))
    if not wanted:
        raise InvalidInput("Name the members to split off.")
    now = datetime.now(UTC)
    async with resources.sessions() as session, session.begin():
        cluster = await _locked_cluster(session, actor, cluster_id)
        members = {m.id: m for m in await _members(session, [cluster.id])}
        missing = [m for m in wanted if m not in members]
        if missing:
            raise InvalidInput(f"Member {missing[0]} is not in this cluster.")
        if len(wanted) == len(members):
            raise InvalidInput("A split must leave at least one member in the cluster; rename it instead.")
        top = await session.scalar(
            select(func.max(IdentityCluster.number)).where(
                IdentityCluster.case_id == cluster.case_id, IdentityCluster.kind == cluster.kind
            )
        )
        split = IdentityCluster(
            id=uuid.uuid4(),
            case_id=cluster.case_id,
            kind=cluster.kind,
            analyzer=cluster.analyzer,
            number=(top or 0) + 1,
            created_at=now,
            updated_at=now,
        )
        session.add(split)
        await session.flush()
        for member_id in wanted:
            member = members[member_id]
            member.cluster_id, member.assigned_by = split.id, Assignment.USER
            member.assigned_by_user, member.assigned_at, member.similarity = actor.user_id, now, None
        await _exclude(session, wanted, cluster.id, actor)
        cluster.updated_at = now
        record_correction(
            session,
            cluster.case_id,
            cluster.kind,
            "split",
            actor,
            {"from": str(cluster.id), "into": str(split.id), "members": [str(m) for m in wanted]},
        )
    return split


async def _exclude(session: AsyncSession, member_ids: Sequence[uuid.UUID], cluster_id: uuid.UUID, actor: Actor) -> None:
    await session.flush()
    await session.execute(
        insert(IdentityExclusion)
        .values([{"member_id": m, "cluster_id": cluster_id, "created_by": actor.user_id} for m in member_ids])
        .on_conflict_do_nothing()
    )


async def move_member(
    *, resources: Resources, actor: Actor, member_id: uuid.UUID, cluster_id: uuid.UUID
) -> IdentityMember:
    """Put a member into another cluster of its case ("this is Bob, not Alice"): placed by the user, and never put
    back into the cluster it left. Moving it into its own cluster confirms it there."""
    now = datetime.now(UTC)
    async with resources.sessions() as session, session.begin():
        member = await _locked_member(session, actor, member_id)
        target = await _case_cluster(session, cluster_id, member.case_id)
        if target.kind is not member.kind or target.analyzer != member.analyzer:
            raise InvalidInput("A member can only join a cluster of its kind, made by its analyzer.")
        if member.kind is IdentityKind.FACE:
            await _refuse_frame_clash(session, [*await _members(session, [target.id]), member])
        source = member.cluster_id
        if source != target.id:
            await _exclude(session, [member.id], source, actor)
        await session.execute(
            delete(IdentityExclusion).where(
                IdentityExclusion.member_id == member.id, IdentityExclusion.cluster_id == target.id
            )
        )
        member.cluster_id, member.assigned_by = target.id, Assignment.USER
        member.assigned_by_user, member.assigned_at, member.similarity = actor.user_id, now, None
        await session.flush()
        await settle(session, (member.case_id, member.kind), {source, target.id}, now)
        record_correction(
            session,
            member.case_id,
            member.kind,
            "move",
            actor,
            {"member_id": str(member.id), "from": str(source), "to": str(target.id)},
        )
    return member


async def remove_member(*, resources: Resources, actor: Actor, member_id: uuid.UUID) -> IdentityMember:
    """ "Not this person": the member leaves its cluster for good, and automation places it again among the
    others (or alone). The exclusion stays, so no later run puts it back."""
    async with resources.sessions() as session, session.begin():
        member = await _locked_member(session, actor, member_id)
        source = member.cluster_id
        await _exclude(session, [member.id], source, actor)
        member.assigned_by, member.assigned_by_user = Assignment.AUTO, actor.user_id
        await session.flush()
        await cluster_media_locked(
            session,
            resources,
            case_id=member.case_id,
            media_id=member.media_id,
            analyzer=member.analyzer,
            kind=member.kind,
        )
        placed = await session.get(IdentityMember, member_id, populate_existing=True)
        if placed is None:  # its embedding is gone: the media was analysed again without it
            raise NotFound("Member", member_id)
        record_correction(
            session,
            placed.case_id,
            placed.kind,
            "remove",
            actor,
            {"member_id": str(placed.id), "from": str(source), "to": str(placed.cluster_id)},
        )
    return placed
