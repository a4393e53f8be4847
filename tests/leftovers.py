"""What every store still holds for a case or media items, for tests that delete things and prove nothing is left."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Iterable

from sqlalchemy import func, or_, select

from aima.db.models import Artifact, AuditEntry, Case, CaseMember, Job, Media, Task, Upload
from aima.db.vectors import COLLECTIONS
from aima.resources import Resources


async def stored(
    resources: Resources, *, case_id: str | uuid.UUID, media_ids: Iterable[str | uuid.UUID]
) -> dict[str, int]:
    """Counts of everything that refers to the media (or, with no media ids, to the whole case) in every store.

    With media ids: the media's rows, results, vectors, objects and multipart uploads under each media prefix.
    Without: the case's rows too, and everything under the case prefix.
    """
    case = uuid.UUID(str(case_id))
    media = [uuid.UUID(str(m)) for m in media_ids]
    whole_case = not media
    counts: dict[str, int] = {}
    async with resources.sessions() as session:

        async def count(name: str, model: type, *where: object) -> None:
            counts[name] = int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        if whole_case:
            media = list((await session.execute(select(Media.id).where(Media.case_id == case))).scalars())
            await count("cases", Case, Case.id == case)
            await count("case_members", CaseMember, CaseMember.case_id == case)
            await count("media", Media, or_(Media.case_id == case, Media.id.in_(media)))
            await count("jobs", Job, or_(Job.case_id == case, Job.media_id.in_(media)))
            await count("uploads", Upload, or_(Upload.case_id == case, Upload.media_id.in_(media)))
        else:
            await count("media", Media, Media.id.in_(media))
            await count("jobs", Job, Job.media_id.in_(media))
            await count("uploads", Upload, Upload.media_id.in_(media))
        await count("tasks", Task, Task.media_id.in_(media))
        await count("artifacts", Artifact, Artifact.media_id.in_(media))

    results = resources.results
    if whole_case:
        query: dict[str, object] = {"$or": [{"case_id": str(case)}, {"media_id": {"$in": [str(m) for m in media]}}]}
    else:
        query = {"media_id": {"$in": [str(m) for m in media]}}
    counts["results"] = await results.count_documents(query)

    quoted = ", ".join(f'"{m}"' for m in media)
    vector_filter = f'case_id == "{case}"' if whole_case else f"media_id in [{quoted}]"
    counts["vectors"] = 0
    for spec in COLLECTIONS:
        rows = await resources.milvus.query(
            spec.name, filter=vector_filter, output_fields=["count(*)"], consistency_level="Strong"
        )
        counts["vectors"] += int(rows[0]["count(*)"]) if rows else 0

    prefixes = [f"cases/{case}/"] if whole_case else [f"cases/{case}/media/{m}/" for m in media]
    # Every version and delete marker too: in an object-locked bucket a plain delete only hides an object.
    counts["objects"] = sum([len(set(await resources.store.all_versions(p))) for p in prefixes])
    counts["multipart_uploads"] = sum([len(await resources.store.pending_multipart_uploads(p)) for p in prefixes])
    return counts


def nothing(counts: dict[str, int]) -> bool:
    return not any(counts.values())


async def add_vectors(resources: Resources, *, case_id: str | uuid.UUID, media_id: str | uuid.UUID) -> int:
    """One embedding of the media in every collection, as analyzers will write them; returns how many."""
    for spec in COLLECTIONS:
        await resources.milvus.insert(
            spec.name,
            [
                {
                    "id": uuid.uuid4().hex,
                    "case_id": str(case_id),
                    "media_id": str(media_id),
                    "task_id": str(uuid.uuid4()),
                    "vector": [random.random() for _ in range(spec.dimension)],
                }
            ],
        )
    return len(COLLECTIONS)


async def add_derived_file(resources: Resources, *, media_id: str | uuid.UUID, kind: str = "test-extra") -> str:
    """A derived file in S3 under the media's prefix with its `artifacts` row, as a preparation task stores it
    (of a kind of its own, besides those the analysis made)."""
    async with resources.sessions() as session:
        media = await session.get(Media, uuid.UUID(str(media_id)))
        assert media is not None
        key = f"cases/{media.case_id}/media/{media.id}/{kind}.jpg"
        content = f"derived {kind} of {media.id}".encode()

        async def body() -> AsyncIterator[bytes]:
            yield content

        stored_object = await resources.store.put_stream(key, body(), content_type="image/jpeg", max_bytes=10**6)
        session.add(
            Artifact(
                media_id=media.id,
                kind=kind,
                seq=0,
                storage_key=key,
                content_type="image/jpeg",
                size_bytes=stored_object.size_bytes,
                sha256=hashlib.sha256(content).hexdigest(),
            )
        )
        await session.commit()
    return key


async def audit_entries(resources: Resources, action: str, target_id: str | uuid.UUID) -> list[AuditEntry]:
    async with resources.sessions() as session:
        query = (
            select(AuditEntry)
            .where(AuditEntry.action == action, AuditEntry.target_id == str(target_id))
            .order_by(AuditEntry.id)
        )
        return list((await session.execute(query)).scalars())
