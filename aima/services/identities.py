"""Persons and voices across a case: faces and speaker turns grouped into clusters, and users' corrections of them.

Analyzers store one embedding per face (``face_embeddings``) and per speaker turn (``voice_embeddings``) in Milvus;
the worker then calls `cluster_media` for the media item. Each embedding becomes a *member* (PostgreSQL), placed in a
*cluster* of the case: a person for faces, a voice for turns. Placement (`aima.services.clustering`) compares the
item's members with their nearest neighbours among the case's other members, found by a Milvus search filtered by
case, and with each other (a video shows one person on many keyframes); thresholds are in `IdentitySettings`.

Corrections (`aima.services.identity_corrections`) are users' statements and automation never contradicts them: a
member a user placed (move, split, merge) stays where it is; "not this person" (move, remove) is kept as an exclusion
the member is never placed against again; two faces of one keyframe are never one person. Every change to the
clusters of a case and kind happens under one PostgreSQL advisory lock, so several workers finishing media of one
case, and users correcting it, take turns. Running `cluster_media` again re-places only that item's automatic
members, into the same clusters when nothing else changed; `recluster_case` re-places every automatic member of the
case, and `reconcile` catches up with analyses whose clustering was lost. Reading is in
`aima.services.identity_views`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pymilvus import AsyncMilvusClient
from pymilvus.exceptions import MilvusException
from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import (
    Assignment,
    IdentityCluster,
    IdentityCorrection,
    IdentityExclusion,
    IdentityKind,
    IdentityMember,
    IdentitySync,
    Media,
    Task,
    TaskState,
)
from aima.errors import BackendUnavailable, InvalidInput, NotFound
from aima.resources import Resources
from aima.services.access import Actor, CaseAccess, ensure
from aima.services.artifacts import PREPARE_PREFIX
from aima.services.cases import case_with_access
from aima.services.clustering import Placement, Unit, Vectors, normalised
from aima.settings import IdentitySettings

logger = logging.getLogger(__name__)

#: The Milvus collection each kind of member comes from.
COLLECTIONS: Mapping[IdentityKind, str] = {
    IdentityKind.FACE: "face_embeddings",
    IdentityKind.VOICE: "voice_embeddings",
}
_DIMENSIONS: Mapping[IdentityKind, int] = {IdentityKind.FACE: 512, IdentityKind.VOICE: 256}
#: What a row of those collections may carry beside its vector (faces: keyframe and box; turns: time and speaker).
_ROW_FIELDS = ["id", "vector", "key", "timestamp_s", "keyframe", "box", "det_score", "start_s", "end_s", "speaker"]
#: Most embeddings read for one media item and analyzer (Milvus's query window).
MAX_ROWS_PER_MEDIA = 16384
#: Media items whose embeddings are read in one request (halved when they hold more rows than a request returns).
_MEDIA_BATCH = 50
#: Query vectors per Milvus search request.
_SEARCH_BATCH = 64
#: Analyzer names go into Milvus filter expressions: only these characters.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def threshold(settings: IdentitySettings, kind: IdentityKind) -> float:
    return settings.face_threshold if kind is IdentityKind.FACE else settings.voice_threshold


def display_name(cluster: IdentityCluster) -> str:
    """The user's label, else "Person 3" or "Voice 2"."""
    return cluster.label or f"{'Person' if cluster.kind is IdentityKind.FACE else 'Voice'} {cluster.number}"


def _checked_name(analyzer: str) -> str:
    if not _NAME.match(analyzer):
        raise InvalidInput(f"{analyzer!r} is not a valid analyzer name.")
    return analyzer


async def lock_identities(session: AsyncSession, case_id: uuid.UUID, kind: IdentityKind) -> None:
    """Serialize every change to the clusters of one case and kind (released with the transaction)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"identities:{case_id}:{kind}"},
    )


# --- Embeddings in Milvus ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingRow:
    """One stored embedding of a media item with the facts the analyzer kept beside it."""

    vector_id: str
    analyzer: str
    key: str
    vector: Vectors
    start_s: float | None
    end_s: float | None
    keyframe: int | None
    speaker: str | None
    box: list[float] | None
    det_score: float | None

    @classmethod
    def of(cls, raw: Mapping[str, Any], analyzer: str) -> EmbeddingRow:
        start = raw.get("start_s", raw.get("timestamp_s"))
        box = raw.get("box")
        keyframe = raw.get("keyframe")
        return cls(
            vector_id=str(raw["id"]),
            analyzer=str(raw.get("analyzer", analyzer)),
            key=str(raw["key"])[:200],
            vector=normalised(np.asarray(raw["vector"], dtype=np.float32)[None, :])[0],
            start_s=_number(start),
            end_s=_number(raw.get("end_s")),
            keyframe=int(keyframe) if isinstance(keyframe, int | float) else None,
            speaker=str(raw["speaker"])[:50] if raw.get("speaker") is not None else None,
            box=[float(v) for v in box] if isinstance(box, list) and len(box) == 4 else None,
            det_score=_number(raw.get("det_score")),
        )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _milvus_query(milvus: AsyncMilvusClient, collection: str, expression: str) -> list[dict[str, Any]]:
    try:
        rows: list[dict[str, Any]] = await milvus.query(
            collection,
            filter=expression,
            output_fields=[*_ROW_FIELDS, "analyzer", "media_id"],
            limit=MAX_ROWS_PER_MEDIA,
            consistency_level="Strong",
        )
    except (MilvusException, OSError) as exc:
        raise BackendUnavailable("The vector store is unavailable.") from exc
    return rows


def _rows(raw: Iterable[Mapping[str, Any]], analyzer: str | None) -> list[EmbeddingRow]:
    rows = [EmbeddingRow.of(row, analyzer or "") for row in raw if row.get("vector") is not None and row.get("key")]
    return sorted(rows, key=lambda row: (row.analyzer, row.key))


async def media_embeddings(
    milvus: AsyncMilvusClient, kind: IdentityKind, media_id: uuid.UUID, analyzer: str | None = None
) -> list[EmbeddingRow]:
    """The media item's embeddings of this kind (of one analyzer, or of all), in key order."""
    expression = f'media_id == "{media_id}"'
    if analyzer is not None:
        expression += f' and analyzer == "{_checked_name(analyzer)}"'
    raw = await _milvus_query(milvus, COLLECTIONS[kind], expression)
    if len(raw) >= MAX_ROWS_PER_MEDIA:
        logger.warning("media %s has %d %s embeddings or more: the rest is not clustered", media_id, len(raw), kind)
    return _rows(raw, analyzer)


async def case_embeddings(
    milvus: AsyncMilvusClient, kind: IdentityKind, media_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[EmbeddingRow]]:
    """The embeddings of this kind of many media items, by media, in few requests: batches of media, halved when
    one holds more rows than a request returns."""
    found: dict[uuid.UUID, list[EmbeddingRow]] = {}
    batches = [list(media_ids[i : i + _MEDIA_BATCH]) for i in range(0, len(media_ids), _MEDIA_BATCH)]
    while batches:
        batch = batches.pop()
        if len(batch) == 1:
            found[batch[0]] = await media_embeddings(milvus, kind, batch[0])
            continue
        listed = ", ".join(f'"{media_id}"' for media_id in batch)
        raw = await _milvus_query(milvus, COLLECTIONS[kind], f"media_id in [{listed}]")
        if len(raw) >= MAX_ROWS_PER_MEDIA:
            batches += [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
            continue
        by_media: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in raw:
            by_media[str(row.get("media_id"))].append(row)
        found.update({media_id: _rows(by_media[str(media_id)], None) for media_id in batch})
    return found


async def _neighbours(
    milvus: AsyncMilvusClient,
    kind: IdentityKind,
    centres: Sequence[Vectors],
    *,
    case_id: uuid.UUID,
    media_id: uuid.UUID,
    analyzer: str,
    limit: int,
) -> list[list[tuple[str, float]]]:
    """For each vector, the nearest embeddings of the case's other media (made by the same analyzer)."""
    expression = f'case_id == "{case_id}" and analyzer == "{_checked_name(analyzer)}" and media_id != "{media_id}"'
    found: list[list[tuple[str, float]]] = []
    for start in range(0, len(centres), _SEARCH_BATCH):
        batch = [vector.tolist() for vector in centres[start : start + _SEARCH_BATCH]]
        try:
            answer = await milvus.search(
                COLLECTIONS[kind], data=batch, filter=expression, limit=limit, consistency_level="Strong"
            )
        except (MilvusException, OSError) as exc:
            raise BackendUnavailable("The vector store is unavailable.") from exc
        found.extend([(str(hit["id"]), float(hit["distance"])) for hit in hits] for hits in answer)
    return found


# --- Placement ---------------------------------------------------------------------------------------------------


def face_tokens(member: IdentityMember) -> frozenset[str]:
    if member.keyframe is not None:
        return frozenset({f"{member.media_id}:frame:{member.keyframe}"})
    if member.start_s is not None:
        return frozenset({f"{member.media_id}:time:{member.start_s:.3f}"})
    return frozenset()


def _units(
    kind: IdentityKind,
    members: Sequence[IdentityMember],
    vectors: Mapping[uuid.UUID, Vectors],
    excluded: Mapping[uuid.UUID, frozenset[uuid.UUID]],
    previous: Mapping[uuid.UUID, uuid.UUID | None],
) -> list[Unit]:
    """Automatic members grouped into what moves as a whole, in a stable order (time, then key).

    A face is a unit of its own. A speaker's turns in one media item are one unit, except the turns a user excluded
    from some cluster, which go with the turns excluded from exactly the same clusters.
    """
    groups: dict[tuple[str, frozenset[uuid.UUID]], list[IdentityMember]] = defaultdict(list)
    for member in sorted(members, key=lambda m: (str(m.media_id), m.start_s or 0.0, m.key)):
        if kind is IdentityKind.FACE or member.speaker is None:
            owner = f"member:{member.id}"
        else:
            owner = f"{member.media_id}:speaker:{member.speaker}"
        groups[(owner, excluded.get(member.id, frozenset()))].append(member)
    units = []
    for (owner, excluded_from), group in groups.items():
        # A face holds its keyframe; a speaker holds the one voice of its media item (turns without a speaker
        # label hold nothing: nothing says they are not one voice).
        if kind is IdentityKind.FACE:
            tokens = face_tokens(group[0])
        else:
            tokens = frozenset({f"{group[0].media_id}:voice"} if group[0].speaker is not None else ())
        before = Counter(previous[m.id] for m in group if previous.get(m.id) is not None).most_common(1)
        units.append(
            Unit(
                members=tuple(m.id for m in group),
                vectors=np.stack([vectors[m.id] for m in group]),
                owner=owner,
                tokens=tokens,
                excluded=excluded_from,
                previous=before[0][0] if before else None,
            )
        )
    return units


@dataclass
class _Run:
    """One placement run over members of one case, kind and analyzer, and what it changed."""

    case_id: uuid.UUID
    kind: IdentityKind
    analyzer: str
    new_members: set[uuid.UUID]
    moved: int = 0


async def _exclusions(session: AsyncSession, member_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, frozenset[uuid.UUID]]:
    ids = list(member_ids)
    if not ids:
        return {}
    found: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    query = select(IdentityExclusion.member_id, IdentityExclusion.cluster_id).where(
        IdentityExclusion.member_id.in_(ids)
    )
    for member_id, cluster_id in await session.execute(query):
        found[member_id].add(cluster_id)
    return {member: frozenset(clusters) for member, clusters in found.items()}


async def _barred(
    session: AsyncSession, clusters: set[uuid.UUID], in_run: Sequence[uuid.UUID]
) -> dict[uuid.UUID, set[uuid.UUID]]:
    """For clusters with members outside the run: the clusters those members were excluded from."""
    if not clusters:
        return {}
    query = (
        select(IdentityMember.cluster_id, IdentityExclusion.cluster_id)
        .join(IdentityExclusion, IdentityExclusion.member_id == IdentityMember.id)
        .where(IdentityMember.cluster_id.in_(clusters), IdentityMember.id.not_in(list(in_run)))
    )
    barred: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for cluster, excluded_from in await session.execute(query):
        barred[cluster].add(excluded_from)
    return barred


async def _unshared_clusters(
    session: AsyncSession, clusters: set[uuid.UUID], movable: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Of these clusters, those with no member other than the movable ones: a run may reuse them."""
    if not clusters:
        return set()
    held = (
        select(IdentityMember.cluster_id)
        .where(IdentityMember.cluster_id.in_(clusters), IdentityMember.id.not_in(list(movable)))
        .distinct()
    )
    return clusters - set((await session.execute(held)).scalars())


async def _sync(
    session: AsyncSession,
    existing: Sequence[IdentityMember],
    rows: Sequence[EmbeddingRow],
    *,
    media_id: uuid.UUID,
    run: _Run,
) -> tuple[list[IdentityMember], dict[uuid.UUID, Vectors]]:
    """Members as the stored embeddings now are: those whose key is gone are removed, new ones made (and added to
    the session once placed); the facts of the others are refreshed."""
    by_key = {row.key: row for row in rows}
    kept = {}
    for member in existing:
        if member.key in by_key:
            kept[member.key] = member
        else:
            await session.delete(member)
    members, vectors = [], {}
    for row in rows:
        found = kept.get(row.key)
        if found is not None:
            member = found
        else:
            member = IdentityMember(
                id=uuid.uuid4(),
                case_id=run.case_id,
                media_id=media_id,
                kind=run.kind,
                analyzer=run.analyzer,
                key=row.key,
                assigned_by=Assignment.AUTO,
            )
            run.new_members.add(member.id)
        member.vector_id = row.vector_id
        member.start_s, member.end_s, member.keyframe = row.start_s, row.end_s, row.keyframe
        member.speaker, member.box, member.det_score = row.speaker, row.box, row.det_score
        members.append(member)
        vectors[member.id] = row.vector
    return members, vectors


async def _place(
    session: AsyncSession,
    milvus: AsyncMilvusClient,
    settings: IdentitySettings,
    run: _Run,
    members: Sequence[IdentityMember],
    vectors: Mapping[uuid.UUID, Vectors],
    *,
    media_id: uuid.UUID | None,
) -> None:
    """Place the automatic members among the clusters. With `media_id`, the members are that media item's and the
    rest of the case is reached through a nearest-neighbour search; without, `members` are the whole case's."""
    auto = [m for m in members if m.assigned_by is Assignment.AUTO]
    fixed = [m for m in members if m.assigned_by is Assignment.USER]
    in_run = [m.id for m in members]
    previous = {m.id: None if m.id in run.new_members else m.cluster_id for m in auto}
    excluded = await _exclusions(session, [m for m in in_run if m not in run.new_members])
    units = _units(run.kind, auto, vectors, excluded, previous)
    before = {cluster for cluster in previous.values() if cluster is not None}
    found: list[list[tuple[str, float]]] = []
    clusters: dict[str, uuid.UUID] = {}
    if media_id is not None and units:
        found = await _neighbours(
            milvus,
            run.kind,
            [unit.centre for unit in units],
            case_id=run.case_id,
            media_id=media_id,
            analyzer=run.analyzer,
            limit=settings.neighbours,
        )
        clusters = await _clusters_of_vectors(session, run, media_id, {vid for hits in found for vid, _ in hits})
        units = [_with_neighbours(unit, hits, clusters) for unit, hits in zip(units, found, strict=True)]
    outside = set(clusters.values()) | before
    reusable = await _unshared_clusters(session, before, in_run)
    placement = Placement(
        threshold(settings, run.kind),
        len(next(iter(vectors.values()))) if vectors else _DIMENSIONS[run.kind],
        staying=before - reusable,
        reusable=reusable,
        barred=await _barred(session, outside, in_run),
    )
    for member in fixed:
        placement.seed(
            member.cluster_id,
            vectors[member.id],
            owner=f"member:{member.id}",
            tokens=face_tokens(member) if run.kind is IdentityKind.FACE else frozenset(),
            excluded=excluded.get(member.id, frozenset()),
        )
    now = datetime.now(UTC)
    changed: set[uuid.UUID] = set()
    placed = {member_id: placement.place(unit) for unit in units for member_id in unit.members}
    if placement.created:
        top = await session.scalar(
            select(func.max(IdentityCluster.number)).where(
                IdentityCluster.case_id == run.case_id, IdentityCluster.kind == run.kind
            )
        )
        for offset, cluster_id in enumerate(placement.created, start=1):
            session.add(
                IdentityCluster(
                    id=cluster_id, case_id=run.case_id, kind=run.kind, analyzer=run.analyzer, number=(top or 0) + offset
                )
            )
        await session.flush()
    for member in auto:
        where = placed[member.id]
        if member.id in run.new_members:
            member.cluster_id, member.assigned_at = where.cluster, now
            session.add(member)
            changed.add(where.cluster)
        elif member.cluster_id != where.cluster:
            changed |= {member.cluster_id, where.cluster}
            member.cluster_id, member.assigned_at = where.cluster, now
            run.moved += 1
        member.similarity = where.similarity
    await session.flush()
    await settle(session, run, changed, now)


def _with_neighbours(unit: Unit, found: Sequence[tuple[str, float]], clusters: Mapping[str, uuid.UUID]) -> Unit:
    best: dict[uuid.UUID, float] = {}
    for vector_id, similarity in found:
        cluster = clusters.get(vector_id)
        if cluster is not None and similarity > best.get(cluster, -2.0):
            best[cluster] = similarity
    return Unit(unit.members, unit.vectors, unit.owner, unit.tokens, unit.excluded, unit.previous, best)


async def _clusters_of_vectors(
    session: AsyncSession, run: _Run, media_id: uuid.UUID, vector_ids: set[str]
) -> dict[str, uuid.UUID]:
    """The clusters of the members these Milvus rows are (rows not clustered yet have none)."""
    if not vector_ids:
        return {}
    query = select(IdentityMember.vector_id, IdentityMember.cluster_id).where(
        IdentityMember.case_id == run.case_id,
        IdentityMember.vector_id.in_(vector_ids),
        IdentityMember.kind == run.kind,
        IdentityMember.analyzer == run.analyzer,
        IdentityMember.media_id != media_id,
    )
    return {vector_id: cluster_id for vector_id, cluster_id in await session.execute(query)}


async def settle(
    session: AsyncSession, run: _Run | tuple[uuid.UUID, IdentityKind], changed: set[uuid.UUID], now: datetime
) -> None:
    """Drop the case's clusters of this kind left without members (by this run, or by a media deletion, whose
    members went with their media); mark those that changed."""
    case_id, kind = (run.case_id, run.kind) if isinstance(run, _Run) else run
    emptied = (
        delete(IdentityCluster)
        .where(
            IdentityCluster.case_id == case_id,
            IdentityCluster.kind == kind,
            ~exists().where(IdentityMember.cluster_id == IdentityCluster.id),
        )
        .returning(IdentityCluster.id)
        .execution_options(synchronize_session=False)
    )
    dropped = set((await session.execute(emptied)).scalars())
    alive = changed - dropped
    if alive:
        await session.execute(
            update(IdentityCluster)
            .where(IdentityCluster.id.in_(alive))
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )


# --- Runs: one media item, a whole case ----------------------------------------------------------------------------


async def cluster_media(
    resources: Resources, *, case_id: uuid.UUID, media_id: uuid.UUID, analyzer: str, kind: str
) -> None:
    """Place the faces (kind "face") or speaker turns ("voice") that `analyzer` stored for a media item among the
    case's clusters. The worker calls it after storing the embeddings; running it again re-places only the item's
    automatic members."""
    identity_kind = IdentityKind(kind)
    _checked_name(analyzer)
    async with resources.sessions() as session, session.begin():
        await lock_identities(session, case_id, identity_kind)
        await cluster_media_locked(
            session, resources, case_id=case_id, media_id=media_id, analyzer=analyzer, kind=identity_kind
        )


async def cluster_media_locked(
    session: AsyncSession,
    resources: Resources,
    *,
    case_id: uuid.UUID,
    media_id: uuid.UUID,
    analyzer: str,
    kind: IdentityKind,
) -> _Run | None:
    if await session.scalar(select(Media.case_id).where(Media.id == media_id)) != case_id:
        logger.info("media %s is not in case %s (any more): nothing to cluster", media_id, case_id)
        return None
    read_at = datetime.now(UTC)
    rows = await media_embeddings(resources.milvus, kind, media_id, analyzer)
    existing = await session.scalars(
        select(IdentityMember).where(
            IdentityMember.media_id == media_id, IdentityMember.analyzer == analyzer, IdentityMember.kind == kind
        )
    )
    run = _Run(case_id=case_id, kind=kind, analyzer=analyzer, new_members=set())
    members, vectors = await _sync(session, list(existing), rows, media_id=media_id, run=run)
    await _place(session, resources.milvus, resources.settings.identities, run, members, vectors, media_id=media_id)
    await _mark_synced(session, [(media_id, len(members))], analyzer, kind, read_at)
    logger.info(
        "clustered %d %s embeddings of media %s (%s): %d new, %d moved",
        len(members),
        kind,
        media_id,
        analyzer,
        len(run.new_members),
        run.moved,
    )
    return run


async def _mark_synced(
    session: AsyncSession,
    media: Sequence[tuple[uuid.UUID, int]],
    analyzer: str,
    kind: IdentityKind,
    read_at: datetime,
) -> None:
    """Record that the embeddings stored by `read_at` are clustered (`reconcile` looks for runs after that)."""
    if not media:
        return
    statement = insert(IdentitySync).values(
        [
            {"media_id": media_id, "analyzer": analyzer, "kind": kind, "synced_at": read_at, "members": count}
            for media_id, count in media
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[IdentitySync.media_id, IdentitySync.analyzer, IdentitySync.kind],
            set_={"synced_at": statement.excluded.synced_at, "members": statement.excluded.members},
        )
    )


async def reconcile(resources: Resources, *, within: timedelta = timedelta(days=1), limit: int = 50) -> int:
    """Cluster what the worker could not (`cluster_media` failed, or the worker stopped in between): the faces and
    voices of analyses that succeeded within `within` and started after their media's embeddings were last
    clustered. Analyses that stored none are marked checked. Meant for the worker's periodic reconciler; returns
    how many (media, analyzer, kind) it clustered."""
    last_run = func.max(Task.started_at)
    synced = (
        select(func.count())
        .where(
            IdentitySync.media_id == Task.media_id,
            IdentitySync.analyzer == Task.analyzer,
            IdentitySync.synced_at >= last_run,
        )
        .scalar_subquery()
    )
    query = (
        # Media.id rather than Task.media_id: the join leaves only media tasks, and the row's type says so.
        select(Media.id, Task.analyzer, Media.case_id)
        .join(Media, Media.id == Task.media_id)
        .where(
            Task.state == TaskState.SUCCEEDED,
            Task.finished_at > datetime.now(UTC) - within,
            ~Task.analyzer.startswith(PREPARE_PREFIX),
        )
        .group_by(Task.media_id, Media.id, Task.analyzer, Media.case_id)
        .having(synced < len(IdentityKind))
        .order_by(last_run)
        .limit(limit)
    )
    async with resources.sessions() as session:
        pending = (await session.execute(query)).all()
    clustered = 0
    for media_id, analyzer, case_id in pending:
        for kind in IdentityKind:
            if await _has_embeddings(resources, media_id, analyzer, kind):
                await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer=analyzer, kind=kind)
                clustered += 1
            else:
                async with resources.sessions() as session, session.begin():
                    await _mark_synced(session, [(media_id, 0)], analyzer, kind, datetime.now(UTC))
    if clustered:
        logger.info("reconciled the persons and voices of %d analyses", clustered)
    return clustered


async def _has_embeddings(resources: Resources, media_id: uuid.UUID, analyzer: str, kind: IdentityKind) -> bool:
    """Whether the analysis stored embeddings of this kind, or has members left to drop."""
    async with resources.sessions() as session:
        members = await session.scalar(
            select(
                exists().where(
                    IdentityMember.media_id == media_id,
                    IdentityMember.analyzer == analyzer,
                    IdentityMember.kind == kind,
                )
            )
        )
    if members or not _NAME.match(analyzer):
        return bool(members)
    try:
        rows = await resources.milvus.query(
            COLLECTIONS[kind],
            filter=f'media_id == "{media_id}" and analyzer == "{analyzer}"',
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
    except (MilvusException, OSError) as exc:
        raise BackendUnavailable("The vector store is unavailable.") from exc
    return bool(rows and rows[0].get("count(*)", 0))


@dataclass(frozen=True)
class ReclusterSummary:
    members: int
    clusters: int
    #: Automatic members that changed cluster.
    moved: int


async def recluster_case(
    resources: Resources, *, case_id: uuid.UUID, kind: IdentityKind, actor: Actor | None = None
) -> ReclusterSummary:
    """Place every automatic member of the case again, media by media in upload order, as if they had arrived in
    that order; users' placements and exclusions hold. It also picks up media whose clustering failed, and drops
    members whose embeddings are gone. With `actor`, an editor of the case asked for it (and it is recorded)."""
    async with resources.sessions() as session, session.begin():
        if actor is not None:
            await ensure_case_access(session, actor, case_id, NotFound("Case", case_id))
        await lock_identities(session, case_id, kind)
        media_ids = list(
            await session.scalars(select(Media.id).where(Media.case_id == case_id).order_by(Media.created_at, Media.id))
        )
        read_at = datetime.now(UTC)
        rows: dict[tuple[str, uuid.UUID], list[EmbeddingRow]] = defaultdict(list)
        for media_id, embedded in (await case_embeddings(resources.milvus, kind, media_ids)).items():
            for row in embedded:
                rows[(row.analyzer, media_id)].append(row)
        existing: dict[tuple[str, uuid.UUID], list[IdentityMember]] = defaultdict(list)
        stored = await session.scalars(
            select(IdentityMember).where(IdentityMember.case_id == case_id, IdentityMember.kind == kind)
        )
        for member in stored:
            existing[(member.analyzer, member.media_id)].append(member)
        total = moved = 0
        for analyzer in sorted({a for a, _ in rows} | {a for a, _ in existing}):
            run = _Run(case_id=case_id, kind=kind, analyzer=analyzer, new_members=set())
            members: list[IdentityMember] = []
            vectors: dict[uuid.UUID, Vectors] = {}
            for media_id in media_ids:
                synced, synced_vectors = await _sync(
                    session, existing[(analyzer, media_id)], rows[(analyzer, media_id)], media_id=media_id, run=run
                )
                members.extend(synced)
                vectors.update(synced_vectors)
            await _place(session, resources.milvus, resources.settings.identities, run, members, vectors, media_id=None)
            counts = Counter(member.media_id for member in members)
            await _mark_synced(session, [(m, counts[m]) for m in media_ids], analyzer, kind, read_at)
            total, moved = total + len(members), moved + run.moved
        clusters = await session.scalar(
            select(func.count()).where(IdentityCluster.case_id == case_id, IdentityCluster.kind == kind)
        )
        summary = ReclusterSummary(members=total, clusters=clusters or 0, moved=moved)
        if actor is not None:
            record_correction(session, case_id, kind, "recluster", actor, {"members": total, "moved": moved})
    logger.info("reclustered the %s members of case %s: %s", kind, case_id, summary)
    return summary


# --- Access ---------------------------------------------------------------------------------------------------


async def ensure_case_access(
    session: AsyncSession,
    actor: Actor,
    case_id: uuid.UUID,
    missing: NotFound,
    needed: CaseAccess = CaseAccess.EDITOR,
) -> None:
    """The actor may do what `needed` allows in the case; an unreadable case answers `missing` (the object asked
    for), so that ids of other cases cannot be probed."""
    try:
        _, access = await case_with_access(session=session, actor=actor, case_id=case_id)
    except NotFound:
        raise missing from None
    ensure(access, needed, "correct its persons and voices" if needed >= CaseAccess.EDITOR else "read it")


def record_correction(
    session: AsyncSession, case_id: uuid.UUID, kind: IdentityKind, action: str, actor: Actor, details: dict[str, Any]
) -> None:
    """Keep a user's correction (or requested recluster) as provenance."""
    session.add(IdentityCorrection(case_id=case_id, kind=kind, action=action, actor_id=actor.user_id, details=details))
