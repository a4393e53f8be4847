"""Checking the chain of custody: re-hash stored originals and compare them with what was recorded at upload."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from botocore.exceptions import ClientError
from sqlalchemy import select, update

from aima.db.models import Media
from aima.resources import Resources
from aima.services.audit import AuditAction, AuditRecord, record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    media_id: uuid.UUID
    case_id: uuid.UUID
    storage_key: str
    ok: bool
    #: Why it failed: "missing", or the size and hash found.
    problem: str | None = None


async def verify_originals(
    resources: Resources, *, case_id: uuid.UUID | None = None, concurrency: int = 4
) -> AsyncIterator[Verification]:
    """Re-hash every stored original (of one case, or all), record the outcome on each media and yield it.

    A changed or missing original is also written to the audit trail (`media.verify_failed`).
    """
    query = select(Media).order_by(Media.created_at)
    if case_id is not None:
        query = query.where(Media.case_id == case_id)
    async with resources.sessions() as session:
        rows = list((await session.execute(query)).scalars())
    slots = asyncio.Semaphore(concurrency)

    async def check(media: Media) -> Verification:
        found = Verification(media.id, media.case_id, media.storage_key, ok=True)
        async with slots:
            try:
                stored = await resources.store.hash_object(media.storage_key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
                    raise
                return replace(found, ok=False, problem="the stored original is missing")
        if stored.sha256 == media.sha256 and stored.size_bytes == media.size_bytes:
            return found
        problem = (
            f"stored: {stored.size_bytes} bytes, sha256 {stored.sha256}; "
            f"recorded: {media.size_bytes} bytes, sha256 {media.sha256}"
        )
        return replace(found, ok=False, problem=problem)

    for done in asyncio.as_completed([check(row) for row in rows]):
        result = await done
        async with resources.sessions() as session:
            await session.execute(
                update(Media)
                .where(Media.id == result.media_id)
                .values(verified_at=datetime.now(UTC), verified_ok=result.ok)
            )
            await session.commit()
        if not result.ok:
            logger.error("original of media %s failed verification: %s", result.media_id, result.problem)
            await record(
                resources.engine,
                AuditRecord(
                    action=AuditAction.MEDIA_VERIFY_FAILED,
                    actor_email="system:verify",
                    target_type="media",
                    target_id=str(result.media_id),
                    details={"case_id": str(result.case_id), "problem": result.problem},
                ),
            )
        yield result
