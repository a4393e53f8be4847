"""What a case analyzer (the dossier's fusion) is given: the case's media, every stored result, the citable evidence
items of those results, the persons and voices, and what the job could not analyse.

The evidence items come from the analyzers that made the results (`Analyzer.evidence`); results of analyzers this
process does not have are passed on as results but offer no items. The same reading serves the API, which resolves
a dossier's citations back into evidence for the reader (`evidence_index`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.analysis import (
    CaseInput,
    CaseMedia,
    EvidenceItem,
    IdentityCluster,
    MediaKind,
    MissingAnalysis,
    ProgressCallback,
)
from aima.db import models
from aima.db.models import Case, IdentityMember, Job, Media, Task, TaskState
from aima.errors import BackendUnavailable, NotFound, UnknownAnalyzer
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources
from aima.services.artifacts import PREPARE_PREFIX
from aima.services.identities import display_name

if TYPE_CHECKING:
    from aima.inference import Endpoints

logger = logging.getLogger(__name__)

#: (media id, analyzer) -> the newest stored result's payload.
Results = dict[tuple[str, str], dict[str, Any]]


async def read_results(
    resources: Resources, media_ids: Sequence[str], analyzers: Collection[str] | None = None
) -> Results:
    """The newest stored result of each (media, analyzer) of these media (one query); of `analyzers` only, when
    given (a dossier's citations need the results they cite, not whole transcripts of every other analyzer)."""
    found: Results = {}
    if not media_ids:
        return found
    query: dict[str, Any] = {"media_id": {"$in": list(media_ids)}}
    if analyzers is not None:
        query["analyzer"] = {"$in": sorted(analyzers)}
    try:
        cursor = resources.results.find(query, {"media_id": 1, "analyzer": 1, "payload": 1}).sort([("updated_at", 1)])
        async for raw in cursor:  # later (newer) versions replace earlier ones
            found[(str(raw["media_id"]), str(raw["analyzer"]))] = dict(raw.get("payload") or {})
    except PyMongoError as exc:
        raise BackendUnavailable("The result store is unavailable.") from exc
    return found


def evidence_of(
    registry: AnalyzerRegistry, media_id: str, analyzer: str, payload: Mapping[str, Any]
) -> list[EvidenceItem]:
    """The citable items of one stored result, as its analyzer lists them; none for an analyzer not installed here
    or a payload it cannot read (logged). Items of another media or analyzer, and repeated keys, are dropped."""
    try:
        found = registry.get(analyzer).evidence(media_id, payload)
    except UnknownAnalyzer:
        return []
    except Exception:
        logger.warning(
            "analyzer %s could not list the evidence of its result for media %s", analyzer, media_id, exc_info=True
        )
        return []
    items: list[EvidenceItem] = []
    seen: set[str] = set()
    for item in found:
        if item.media_id != media_id or item.analyzer != analyzer or item.key in seen:
            logger.warning("analyzer %s listed a foreign or repeated evidence item %r; dropped", analyzer, item.key)
            continue
        seen.add(item.key)
        items.append(item)
    return items


def evidence_index(
    registry: AnalyzerRegistry, results: Mapping[tuple[str, str], Mapping[str, Any]]
) -> dict[tuple[str, str, str], EvidenceItem]:
    """Every evidence item of these results by (media id, analyzer, key)."""
    index: dict[tuple[str, str, str], EvidenceItem] = {}
    for (media_id, analyzer), payload in results.items():
        for item in evidence_of(registry, media_id, analyzer, payload):
            index[(media_id, analyzer, item.key)] = item
    return index


def case_media(rows: Iterable[Media]) -> list[CaseMedia]:
    return [
        CaseMedia(
            media_id=str(row.id),
            kind=MediaKind(row.kind),
            filename=row.filename,
            content_type=row.content_type,
            duration_s=_duration(row.probe),
            uploaded_at=row.created_at.isoformat(),
        )
        for row in rows
    ]


def _duration(probe: Mapping[str, object]) -> float | None:
    value = probe.get("duration_s")
    return float(value) if isinstance(value, int | float) else None


async def build_case_input(
    resources: Resources,
    *,
    case_id: uuid.UUID,
    job_id: uuid.UUID,
    version: int,
    inference: Endpoints | None = None,
    report_progress: ProgressCallback | None = None,
) -> CaseInput:
    """Read the whole case for a case task of job `job_id`, once the job's other tasks ended."""
    async with resources.sessions() as session:
        case = await session.get(Case, case_id)
        if case is None:
            raise NotFound("Case", case_id)
        media = list(
            (
                await session.execute(
                    select(Media).where(Media.case_id == case_id).order_by(Media.created_at, Media.id)
                )
            ).scalars()
        )
        tasks = list((await session.execute(select(Task).where(Task.job_id == job_id))).scalars())
        job = await session.get(Job, job_id)
        identities = await _identities(session, case_id)
    listed = case_media(media)
    results = await read_results(resources, [m.media_id for m in listed])
    evidence = list(evidence_index(resources.analyzers, results).values())
    missing = missing_analyses(resources.analyzers, listed, results, tasks, job)
    extra: dict[str, Any] = {"report_progress": report_progress} if report_progress is not None else {}
    return CaseInput(
        case_id=str(case_id),
        title=case.title,
        media=listed,
        results=results,
        evidence=evidence,
        identities=identities,
        missing=missing,
        inference=inference,
        version=version,
        **extra,
    )


def missing_analyses(
    registry: AnalyzerRegistry,
    media: Sequence[CaseMedia],
    results: Mapping[tuple[str, str], object],
    tasks: Sequence[Task],
    job: Job | None,
) -> list[MissingAnalysis]:
    """The job's media analyses that did not succeed, with their error; then, for the media analyzers the job asked
    for, the case's media that have no result of one that accepts them (uploaded after the job started, say)."""
    missing: list[MissingAnalysis] = []
    listed: set[tuple[str, str]] = set()
    analyses = [t for t in tasks if t.media_id is not None and not t.analyzer.startswith(PREPARE_PREFIX)]
    for task in sorted(analyses, key=lambda t: (str(t.media_id), t.analyzer)):
        if task.state is TaskState.SUCCEEDED:
            continue
        key = (str(task.media_id), task.analyzer)
        missing.append(MissingAnalysis(media_id=key[0], analyzer=task.analyzer, reason=_reason(task)))
        listed.add(key)
    asked = sorted({t.analyzer for t in analyses})
    for item in media:
        for name in asked:
            try:
                accepts = registry.get(name).accepts(item.kind)
            except UnknownAnalyzer:
                accepts = True
            key = (item.media_id, name)
            if accepts and key not in results and key not in listed:
                started = f" (uploaded after the job started at {job.created_at:%Y-%m-%d %H:%M} UTC)" if job else ""
                missing.append(MissingAnalysis(media_id=item.media_id, analyzer=name, reason=f"no result{started}"))
                listed.add(key)
    return missing


def _reason(task: Task) -> str:
    if task.error_code:
        return f"{task.error_code}: {task.error_message or ''}".strip()
    return f"the task ended {task.state}" if TaskState(task.state).terminal else f"the task is still {task.state}"


async def _identities(session: AsyncSession, case_id: uuid.UUID) -> list[IdentityCluster]:
    rows = await session.execute(
        select(models.IdentityCluster, IdentityMember.media_id, IdentityMember.analyzer, IdentityMember.key)
        .join(IdentityMember, IdentityMember.cluster_id == models.IdentityCluster.id)
        .where(models.IdentityCluster.case_id == case_id)
        .order_by(
            models.IdentityCluster.kind, models.IdentityCluster.number, IdentityMember.start_s, IdentityMember.key
        )
    )
    clusters: dict[uuid.UUID, tuple[models.IdentityCluster, list[tuple[str, str, str]]]] = {}
    for cluster, media_id, analyzer, key in rows.tuples():
        clusters.setdefault(cluster.id, (cluster, []))[1].append((str(media_id), analyzer, key))
    return [
        IdentityCluster(cluster_id=str(c.id), kind=str(c.kind), label=display_name(c), members=members)
        for c, members in clusters.values()
    ]
