"""Deleting media and cases from every store, the retention sweep, and the re-cleaning of unfinished deletions.

A media item lives in four stores: its rows in PostgreSQL (media, jobs, tasks, artifacts, uploads), its result
documents in MongoDB, its embeddings in Milvus (every collection's rows carry its case and media ids), and its
original, derived files and the files analyzers stored beside their results (``results/{analyzer}/``) in S3 under
``cases/{case}/media/{media}/``. A deletion goes in this order:

1. The access check (the case's owner and administrators), then a count of what the other stores hold. A store
   that does not answer refuses the deletion (`BackendUnavailable`) while nothing is deleted yet.
2. One PostgreSQL transaction deletes the rows and appends the audit entries, so the rows are gone exactly when the
   deletion is on record, and no media row ever points at a deleted original.
3. The result documents, then the vectors, then, only when both are gone, every S3 object under the prefix and every
   open multipart upload. The rows being gone already, a store failing now does not fail the deletion: what is left
   is logged and reported in the summary, and the S3 prefix, kept until everything else is gone, marks the
   unfinished deletion for `sweep_orphans`, which the worker runs periodically and which re-cleans every store for
   a prefix whose row no longer exists.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.documents import DOCUMENT_MODELS
from aima.db.models import Artifact, Case, CaseMember, Job, Media, Task, Upload
from aima.db.vectors import COLLECTIONS
from aima.errors import BackendUnavailable, NotFound
from aima.resources import Resources
from aima.services import audit
from aima.services.access import Actor, CaseAccess
from aima.services.audit import AuditAction, AuditRecord
from aima.services.cases import get_case
from aima.services.media import get_media

logger = logging.getLogger(__name__)

#: The actor the audit trail names for deletions made by the retention sweep.
RETENTION_ACTOR = "system:retention"
#: Media the retention sweep deletes in one run at most; the next run goes on where it stopped.
RETENTION_BATCH = 200
#: Orphaned prefixes `sweep_orphans` re-cleans in one run at most.
ORPHAN_BATCH = 100
#: Objects and multipart uploads without a row count as orphans only once they are this old: an upload stores its
#: object moments before its row is written, and a worker may still be writing a derived file.
ORPHAN_GRACE = timedelta(hours=1)
#: How long the stores may take to answer the count made before anything is deleted.
INVENTORY_TIMEOUT_S = 30.0
_CASES = "cases/"


@dataclass(frozen=True)
class Scope:
    """What a deletion covers in the stores other than PostgreSQL: a whole case, or one media item of it."""

    case_id: uuid.UUID
    media_id: uuid.UUID | None = None

    @property
    def prefix(self) -> str:
        """Every S3 key of the scope starts with this (originals and derived files alike)."""
        if self.media_id is None:
            return f"{_CASES}{self.case_id}/"
        return f"{_CASES}{self.case_id}/media/{self.media_id}/"

    @property
    def field(self) -> tuple[str, str]:
        """The field that documents and vectors of the scope carry, and its value."""
        return ("case_id", str(self.case_id)) if self.media_id is None else ("media_id", str(self.media_id))

    def milvus_filter(self) -> str:
        name, value = self.field
        return f'{name} == "{uuid.UUID(value)}"'  # built from a UUID only, never from client text

    def __str__(self) -> str:
        return f"case {self.case_id}" if self.media_id is None else f"media {self.media_id} of case {self.case_id}"


@dataclass
class Removed:
    """What a deletion removed, per kind of thing."""

    media: int = 0
    jobs: int = 0
    tasks: int = 0
    artifacts: int = 0
    uploads: int = 0
    results: int = 0
    vectors: int = 0
    objects: int = 0
    multipart_uploads: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class DeletionSummary:
    case_id: uuid.UUID
    media_ids: list[uuid.UUID]
    removed: Removed
    #: Stores the deletion could not clean, after the rows were gone; `sweep_orphans` re-cleans them.
    leftovers: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.leftovers


@dataclass(frozen=True)
class _Auditor:
    """Who a deletion is recorded for: a user, or the system with a name such as `RETENTION_ACTOR`."""

    actor_id: uuid.UUID | None
    email: str
    client_address: str | None = None
    #: Added to the details of every entry (the retention sweep says why it deleted).
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, actor: Actor, client_address: str | None) -> _Auditor:
        return cls(actor.user_id, actor.email, client_address)

    def record(self, action: AuditAction, target_type: str, target_id: object, details: dict[str, Any]) -> AuditRecord:
        return AuditRecord(
            action=action,
            actor_id=self.actor_id,
            actor_email=self.email,
            target_type=target_type,
            target_id=str(target_id),
            client_address=self.client_address,
            details={**details, **self.details},
        )


# --- the operations ----------------------------------------------------------------------------------------------


async def delete_media(
    *, resources: Resources, actor: Actor, media_id: uuid.UUID, client_address: str | None = None
) -> DeletionSummary:
    """Delete a media item from every store (the case's owner and administrators); audited as `media.delete`.

    Someone who may not read the media gets NOT_FOUND, someone who may read but not delete it FORBIDDEN.
    """
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
        await get_case(session=session, actor=actor, case_id=media.case_id, needed=CaseAccess.OWNER)
    return await _purge(resources, Scope(media.case_id, media.id), _Auditor.of(actor, client_address))


async def delete_case(
    *, resources: Resources, actor: Actor, case_id: uuid.UUID, client_address: str | None = None
) -> DeletionSummary:
    """Delete a case with all its media, jobs, shares and open uploads from every store (the owner and
    administrators); audited as `case.delete`, plus a `media.delete` entry for each media item."""
    async with resources.sessions() as session:
        case = await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.OWNER)
    return await _purge(resources, Scope(case.id), _Auditor.of(actor, client_address))


async def _purge(resources: Resources, scope: Scope, auditor: _Auditor) -> DeletionSummary:
    """Count, delete the rows with the audit entries in one transaction, then clean the other stores."""
    try:
        async with asyncio.timeout(INVENTORY_TIMEOUT_S):
            found = await _inventory(resources, scope)
    except Exception as exc:
        logger.warning("deletion of %s refused, a store did not answer: %r", scope, exc)
        raise BackendUnavailable("A store is unavailable; nothing was deleted. Try again later.") from exc
    async with resources.sessions() as session, session.begin():
        summary, doomed = await _delete_rows(session, scope, found, auditor)
    # The rows are gone and the deletion is on record: finish the stores even if the caller goes away meanwhile.
    await asyncio.shield(_clean_stores(resources, scope, summary, doomed))
    removed = summary.removed
    log = logger.info if summary.complete else logger.warning
    log(
        "deleted %s for %s: %d media, %d results, %d vectors, %d objects%s",
        scope,
        auditor.email,
        removed.media,
        removed.results,
        removed.vectors,
        removed.objects,
        f"; left for the orphan sweep: {', '.join(summary.leftovers)}" if summary.leftovers else "",
    )
    return summary


@dataclass
class _Inventory:
    """What the stores other than PostgreSQL hold for a scope, counted before anything is deleted."""

    results: int
    vectors: int
    objects: int
    multipart_uploads: int


@dataclass(frozen=True)
class _Doomed:
    """What the deleted rows pointed at in S3, besides the scope's prefix."""

    #: (key, upload id) of each resumable upload still open.
    open_uploads: list[tuple[str, str]] = field(default_factory=list)
    #: Keys the rows named outside the scope's prefix (none, as long as keys are derived from ids).
    outside_keys: list[str] = field(default_factory=list)


async def _inventory(resources: Resources, scope: Scope) -> _Inventory:
    results, vectors, stored, uploads = await asyncio.gather(
        _count_documents(resources, scope),
        _count_vectors(resources, scope),
        resources.store.listing(scope.prefix),
        resources.store.multipart_uploads(scope.prefix),
    )
    objects = len({item.key for item in stored})
    return _Inventory(results=results, vectors=vectors, objects=objects, multipart_uploads=len(uploads))


# --- PostgreSQL --------------------------------------------------------------------------------------------------


async def _delete_rows(
    session: AsyncSession, scope: Scope, found: _Inventory, auditor: _Auditor
) -> tuple[DeletionSummary, _Doomed]:
    """Delete the scope's rows and append the audit entries, in the caller's transaction."""
    case: Case | None = None
    media_query: Select[Media] = select(Media).order_by(Media.created_at, Media.id).with_for_update()
    if scope.media_id is None:
        case = (await session.execute(select(Case).where(Case.id == scope.case_id).with_for_update())).scalar()
        if case is None:
            raise NotFound("Case", scope.case_id)  # deleted meanwhile
        media = list((await session.execute(media_query.where(Media.case_id == scope.case_id))).scalars())
    else:
        media = list((await session.execute(media_query.where(Media.id == scope.media_id))).scalars())
        if not media:
            raise NotFound("Media", scope.media_id)  # deleted meanwhile
    media_ids = [m.id for m in media]

    upload_scope = Upload.case_id == scope.case_id if scope.media_id is None else Upload.media_id.in_(media_ids)
    open_uploads = [
        (row.storage_key, row.s3_upload_id)
        for row in await session.execute(
            select(Upload.storage_key, Upload.s3_upload_id).where(upload_scope, Upload.state == "open")
        )
    ]
    artifact_keys = list(
        (await session.execute(select(Artifact.storage_key).where(Artifact.media_id.in_(media_ids)))).scalars()
    )
    outside_keys = sorted(
        {key for key in [*(m.storage_key for m in media), *artifact_keys] if not key.startswith(scope.prefix)}
    )

    removed = Removed()
    removed.artifacts = await _count(session, delete(Artifact).where(Artifact.media_id.in_(media_ids)), Artifact.id)
    if scope.media_id is None:
        case_jobs = select(Job.id).where(Job.case_id == scope.case_id)
        tasks = delete(Task).where(Task.media_id.in_(media_ids) | Task.job_id.in_(case_jobs))
        jobs = delete(Job).where(Job.case_id == scope.case_id)
    else:
        tasks = delete(Task).where(Task.media_id.in_(media_ids))
        jobs = delete(Job).where(Job.media_id.in_(media_ids))
    removed.tasks = await _count(session, tasks, Task.id)
    removed.jobs = await _count(session, jobs, Job.id)
    removed.uploads = await _count(session, delete(Upload).where(upload_scope), Upload.id)
    removed.media = await _count(session, delete(Media).where(Media.id.in_(media_ids)), Media.id)
    if case is not None:
        await session.execute(delete(CaseMember).where(CaseMember.case_id == case.id))
        await session.execute(delete(Case).where(Case.id == case.id))

    # What the other stores held a moment ago; they are cleaned right after the commit.
    removed.results, removed.vectors = found.results, found.vectors
    removed.objects = found.objects + len(outside_keys)
    removed.multipart_uploads = found.multipart_uploads
    # Appended last: the append lock serializes every audit writer until this transaction ends.
    conn = await session.connection()
    for item in media:
        details: dict[str, Any] = {
            "case_id": str(item.case_id),
            "sha256": item.sha256,
            "size_bytes": item.size_bytes,
            "content_type": item.content_type,
            "filename": item.filename,
        }
        details |= {"removed": removed.as_dict()} if case is None else {"with_case": True}
        await audit.append(conn, auditor.record(AuditAction.MEDIA_DELETE, "media", item.id, details))
    if case is not None:
        details = {"title": case.title, "owner_id": str(case.owner_id), "removed": removed.as_dict()}
        await audit.append(conn, auditor.record(AuditAction.CASE_DELETE, "case", case.id, details))
    summary = DeletionSummary(case_id=scope.case_id, media_ids=media_ids, removed=removed)
    return summary, _Doomed(open_uploads=open_uploads, outside_keys=outside_keys)


async def _count(session: AsyncSession, statement: Any, column: Any) -> int:
    return len((await session.execute(statement.returning(column))).all())


# --- MongoDB, Milvus, S3 -----------------------------------------------------------------------------------------


def _document_collections(resources: Resources, field_name: str) -> list[Any]:
    """The MongoDB collections whose documents carry `field_name` (every Beanie model AIMA stores)."""
    database = resources.mongo[resources.settings.mongo_database]
    return [
        database[model.Settings.name]  # type: ignore[attr-defined]
        for model in DOCUMENT_MODELS
        if field_name in model.model_fields
    ]


async def _count_documents(resources: Resources, scope: Scope) -> int:
    name, value = scope.field
    counts = [await c.count_documents({name: value}) for c in _document_collections(resources, name)]
    return sum(counts)


async def _delete_documents(resources: Resources, scope: Scope) -> int:
    name, value = scope.field
    deleted = 0
    for collection in _document_collections(resources, name):
        deleted += (await collection.delete_many({name: value})).deleted_count
    return deleted


async def _count_vectors(resources: Resources, scope: Scope) -> int:
    total = 0
    for spec in COLLECTIONS:
        rows = await resources.milvus.query(
            spec.name, filter=scope.milvus_filter(), output_fields=["count(*)"], consistency_level="Strong"
        )
        total += int(rows[0]["count(*)"]) if rows else 0
    return total


async def _delete_vectors(resources: Resources, scope: Scope) -> int:
    deleted = 0
    for spec in COLLECTIONS:
        answer: Any = await resources.milvus.delete(spec.name, filter=scope.milvus_filter())
        # Milvus answers with the deleted primary keys, or with a count (omitted when zero).
        deleted += len(answer) if isinstance(answer, list) else int(answer.get("delete_count", 0))
    return deleted


async def _clean_stores(
    resources: Resources,
    scope: Scope,
    summary: DeletionSummary,
    doomed: _Doomed | None = None,
) -> None:
    """Remove the scope from MongoDB, Milvus and S3, in that order; S3 only when the others succeeded, so that the
    prefix marks an unfinished deletion. Failures are logged and named in `summary.leftovers`, never raised."""
    removed = summary.removed
    steps = (("mongodb", _delete_documents, "results"), ("milvus", _delete_vectors, "vectors"))
    for name, step, counter in steps:
        try:
            setattr(removed, counter, await step(resources, scope))
        except Exception:
            logger.exception("could not delete the %s of %s from %s; left for the orphan sweep", counter, scope, name)
            summary.leftovers.append(name)
    if summary.leftovers:
        summary.leftovers.append("s3")  # kept on purpose: the prefix leads the orphan sweep back here
        return
    store = resources.store
    doomed = doomed or _Doomed()
    try:
        aborted = 0
        known = {upload_id for _, upload_id in doomed.open_uploads}
        listed = await store.multipart_uploads(scope.prefix)
        unknown = [(u.key, u.upload_id) for u in listed if u.upload_id not in known]
        for key, upload_id in [*doomed.open_uploads, *unknown]:
            aborted += await store.abort_multipart(key, upload_id, best_effort=False)
        items = await store.listing(scope.prefix)
        for key in doomed.outside_keys:
            items.extend(item for item in await store.listing(key) if item.key == key)
        removed.objects = await store.delete_versions(items)
        removed.multipart_uploads = aborted
    except Exception:
        logger.exception("could not delete the objects of %s from S3; left for the orphan sweep", scope)
        summary.leftovers.append("s3")


# --- retention and orphans ---------------------------------------------------------------------------------------


@dataclass
class RetentionReport:
    #: The setting in effect for this run; 0: retention is off and nothing was looked at.
    retention_days: int
    deleted: int = 0
    #: Deletions that left something for the orphan sweep.
    incomplete: int = 0
    #: The run stopped early because a store did not answer; the next run goes on.
    stopped: bool = False


async def apply_retention(
    resources: Resources, *, now: datetime | None = None, limit: int = RETENTION_BATCH
) -> RetentionReport:
    """Delete up to `limit` media older than `retention_days` (read live: an administrator may change it), oldest
    first, each in its own transaction and audited as `media.delete` by `RETENTION_ACTOR`."""
    days = resources.settings.retention_days
    report = RetentionReport(retention_days=days)
    if days <= 0:
        return report
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    async with resources.sessions() as session:
        query = (
            select(Media.id, Media.case_id, Media.created_at)
            .where(Media.created_at < cutoff)
            .order_by(Media.created_at, Media.id)
            .limit(limit)
        )
        expired = (await session.execute(query)).all()
    for media_id, case_id, created_at in expired:
        auditor = _Auditor(
            actor_id=None,
            email=RETENTION_ACTOR,
            details={"reason": "retention", "retention_days": days, "created_at": created_at.isoformat()},
        )
        try:
            summary = await _purge(resources, Scope(case_id, media_id), auditor)
        except NotFound:
            continue  # deleted by someone else meanwhile
        except BackendUnavailable:
            report.stopped = True
            break
        report.deleted += 1
        report.incomplete += not summary.complete
    if report.deleted or report.stopped:
        logger.info(
            "retention (%d days): %d media deleted, %d left work for the orphan sweep%s",
            days,
            report.deleted,
            report.incomplete,
            "; stopped, a store is unavailable" if report.stopped else "",
        )
    return report


@dataclass
class _Seen:
    """A prefix found in S3, and the newest object or multipart upload under it."""

    scope: Scope
    newest: datetime


def _scope_of(key: str) -> tuple[uuid.UUID, uuid.UUID | None] | None:
    """The case and media ids a key lies under (`cases/{case}/...`, `cases/{case}/media/{media}/...`)."""
    parts = key.split("/")
    try:
        case_id = uuid.UUID(parts[1])
        media_id = uuid.UUID(parts[3]) if len(parts) > 4 and parts[2] == "media" else None
    except (IndexError, ValueError):
        return None
    return case_id, media_id


async def sweep_orphans(
    resources: Resources,
    *,
    now: datetime | None = None,
    limit: int = ORPHAN_BATCH,
    grace: timedelta = ORPHAN_GRACE,
    prefix: str = _CASES,
) -> list[Scope]:
    """Re-clean every store for S3 prefixes whose case or media row no longer exists (a deletion that a store
    failure or a crash left unfinished, or a derived file a worker wrote after its media was deleted).

    A prefix counts only when everything under it is older than `grace` and no resumable upload row names its
    media. Lists every object under `prefix` (one request per 1000 objects); cleans at most `limit` prefixes.
    """
    store = resources.store
    now = now or datetime.now(UTC)
    cutoff = now - grace
    seen: dict[tuple[uuid.UUID, uuid.UUID | None], datetime] = {}
    if not prefix.startswith(_CASES):
        raise ValueError(f"the orphan sweep looks under {_CASES!r} only")
    try:
        objects = [(item.key, item.modified) for item in await store.listing(prefix)]
        # An upload whose start S3 does not say counts as started now: its prefix is not old enough to clean.
        uploads = [(u.key, u.initiated or now) for u in await store.multipart_uploads(prefix)]
        listed = [*objects, *uploads]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
        return []  # a worker that started before any API created the bucket: nothing stored yet
    for key, stamp in listed:
        ids = _scope_of(key)
        if ids is not None:
            seen[ids] = max(seen.get(ids, stamp), stamp)
    newest_of_case: dict[uuid.UUID, datetime] = {}
    for (case_id, _), stamp in seen.items():
        newest_of_case[case_id] = max(newest_of_case.get(case_id, stamp), stamp)

    async with resources.sessions() as session:
        case_ids = list(newest_of_case)
        live_cases = set(await _existing(session, Case.id, case_ids))
        media_ids = [m for (c, m) in seen if m is not None and c in live_cases]
        live_media = set(await _existing(session, Media.id, media_ids))
        live_media |= set(await _existing(session, Upload.media_id, media_ids))

    orphans = [Scope(c) for c in case_ids if c not in live_cases and newest_of_case[c] < cutoff]
    orphans += [
        Scope(c, m)
        for (c, m), stamp in seen.items()
        if m is not None and c in live_cases and m not in live_media and stamp < cutoff
    ]
    cleaned = []
    for scope in orphans[:limit]:
        summary = DeletionSummary(case_id=scope.case_id, media_ids=[], removed=Removed())
        await _clean_stores(resources, scope, summary)
        removed = summary.removed
        logger.warning(
            "orphan sweep: %s had no row; removed %d results, %d vectors, %d objects, %d multipart uploads%s",
            scope,
            removed.results,
            removed.vectors,
            removed.objects,
            removed.multipart_uploads,
            f"; still left: {', '.join(summary.leftovers)}" if summary.leftovers else "",
        )
        if summary.complete:
            cleaned.append(scope)
    return cleaned


async def _existing(session: AsyncSession, column: Any, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    found: list[uuid.UUID] = []
    for start in range(0, len(ids), 5000):
        batch = ids[start : start + 5000]
        found.extend((await session.execute(select(column).where(column.in_(batch)))).scalars())
    return found
