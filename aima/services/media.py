"""Media intake: sniff the first bytes, stream to S3 while hashing, probe the stored object, register; reading back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import cast, func, select, text
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import Case, Media
from aima.errors import EmptyUpload, InvalidInput, NotFound, UnsupportedMedia
from aima.media.sniff import SNIFF_BYTES, sniff
from aima.metrics import UPLOADED_BYTES
from aima.resources import Resources
from aima.services.access import Actor, CaseAccess, case_access, member_role_of, readable_cases
from aima.services.cases import get_case
from aima.storage import StoredObject, original_key

logger = logging.getLogger(__name__)


class IncomingUpload(Protocol):
    """A file arriving in a request (`aima.streaming_form.IncomingFile`): read once, in order, as it arrives."""

    filename: str | None

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class Registered:
    """The media an upload became; `duplicate` when the case already held these exact bytes."""

    media: Media
    duplicate: bool


def display_name(filename: str | None) -> str:
    """Keep the client's file name for display only: no path parts, no control characters, bounded."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload"


async def _head_and_rest(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `SNIFF_BYTES` (or all, if fewer), and an iterator over everything from the start."""
    head = bytearray()
    async for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break

    async def everything() -> AsyncIterator[bytes]:
        if head:
            yield bytes(head)
        async for chunk in chunks:
            yield chunk

    return bytes(head), everything()


async def upload_media(*, resources: Resources, actor: Actor, case_id: uuid.UUID, upload: IncomingUpload) -> Registered:
    """Stream an upload into S3 while hashing it, then probe it there and register it. Nothing stays on failure.

    The type is sniffed from the first bytes before anything is stored; the bytes never touch the local disk.
    """
    async with resources.sessions() as session:
        case = await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.EDITOR)
    head, everything = await _head_and_rest(upload.chunks())
    if not head:
        raise EmptyUpload()
    sniffed = sniff(head)  # refused here, before a byte is stored
    media_id = uuid.uuid4()
    key = original_key(case.id, media_id)
    stored = await resources.store.put_stream(
        key,
        everything,
        content_type=sniffed.content_type,
        max_bytes=resources.settings.max_upload_bytes,
        metadata={"media-id": str(media_id), "case-id": str(case.id)},
        protect=True,
    )
    return await register_stored(
        resources=resources,
        actor=actor,
        case_id=case.id,
        media_id=media_id,
        stored=stored,
        filename=upload.filename,
        ingest="multipart",
    )


async def register_stored(
    *,
    resources: Resources,
    actor: Actor,
    case_id: uuid.UUID,
    media_id: uuid.UUID,
    stored: StoredObject,
    filename: str | None,
    ingest: str,
) -> Registered:
    """Probe a stored original (in a child process, over a presigned URL) and register it as media of a case.

    Bytes the case already holds become the existing media (the new object is removed); on any failure the object
    is removed unless its row landed after all.
    """
    key = stored.key
    try:
        url = await resources.store.internal_get_url(
            key, expires_s=int(resources.settings.uploads.probe_timeout_s) + 60
        )
        found = await resources.inspector.inspect(url, stored.size_bytes)
        probe = found.probe
        limit_s = resources.settings.uploads.max_duration_s
        if probe.duration_s is not None and probe.duration_s > limit_s:
            raise UnsupportedMedia(
                f"The file lasts {probe.duration_s / 3600:.1f} h, more than the limit of {limit_s / 3600:g} h."
            )
        async with resources.sessions() as session, session.begin():
            # Serialize registrations of the same bytes into the same case, so a duplicate is found, not made.
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{case_id}:{stored.sha256}"}
            )
            existing = (
                await session.execute(
                    select(Media)
                    .where(Media.case_id == case_id, Media.sha256 == stored.sha256)
                    .order_by(Media.created_at)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if existing is None:
                media = Media(
                    id=media_id,
                    case_id=case_id,
                    uploaded_by=actor.user_id,
                    filename=display_name(filename),
                    kind=str(probe.kind),
                    content_type=probe.content_type,
                    format=probe.format,
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    storage_key=key,
                    probe=probe.model_dump(mode="json"),
                    phash=found.phash,
                    ingest=ingest,
                )
                session.add(media)
    except BaseException:
        await asyncio.shield(_remove_if_unregistered(resources, media_id, key))
        raise
    if existing is not None:
        await resources.store.delete(key)
        logger.info(
            "upload into case %s repeats media %s (sha256 %s); kept the first", case_id, existing.id, stored.sha256
        )
        return Registered(media=existing, duplicate=True)
    UPLOADED_BYTES.inc(stored.size_bytes)
    logger.info("stored media %s (%s, %d bytes) in case %s", media_id, probe.content_type, stored.size_bytes, case_id)
    return Registered(media=media, duplicate=False)


async def _remove_if_unregistered(resources: Resources, media_id: uuid.UUID, key: str) -> None:
    """After a failed insert, delete the object unless the row landed after all (a commit whose answer was lost)."""
    try:
        async with resources.sessions() as session:
            if await session.get(Media, media_id) is not None:
                logger.warning("media %s was registered although its commit reported an error; kept", media_id)
                return
        await resources.store.delete(key)
        logger.warning("media row for %s not written; its object was removed", media_id)
    except Exception:
        logger.exception("could not clean up object %s of unregistered media %s", key, media_id)


async def get_media(*, session: AsyncSession, actor: Actor, media_id: uuid.UUID) -> Media:
    query = (
        select(Media, Case.owner_id, member_role_of(actor))
        .join(Case, Media.case_id == Case.id)
        .where(Media.id == media_id)
    )
    row = (await session.execute(query)).first()
    if row is None or case_access(actor, row[1], row[2]) is CaseAccess.NONE:
        raise NotFound("Media", media_id)
    media: Media = row[0]
    return media


async def readable_media_ids(*, session: AsyncSession, actor: Actor, media_ids: list[str]) -> set[str]:
    """Which of these media the actor may read, in one query (for batched nested fields)."""
    ids = []
    for media_id in media_ids:
        try:
            ids.append(uuid.UUID(media_id))
        except ValueError:
            continue
    query = select(Media.id).join(Case, Media.case_id == Case.id).where(Media.id.in_(ids), readable_cases(actor))
    return {str(row) for row in (await session.execute(query)).scalars()}


async def media_of_case(*, session: AsyncSession, case_id: uuid.UUID) -> list[Media]:
    query = select(Media).where(Media.case_id == case_id).order_by(Media.created_at, Media.id)
    return list((await session.execute(query)).scalars())


async def near_duplicates(
    *, session: AsyncSession, actor: Actor, media_id: uuid.UUID, max_bits: int, limit: int = 50
) -> list[Media]:
    """Images of the same case whose perceptual hashes differ from this one's in at most `max_bits` of 64 bits."""
    if not 0 <= max_bits <= 32:
        raise InvalidInput("maxDistance must be between 0 and 32 bits.")
    media = await get_media(session=session, actor=actor, media_id=media_id)
    if media.phash is None:
        return []
    distance = func.bit_count(cast(Media.phash.op("#")(media.phash), BIT(64)))
    query = (
        select(Media)
        .where(Media.case_id == media.case_id, Media.id != media.id, Media.phash.is_not(None), distance <= max_bits)
        .order_by(distance, Media.created_at)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


@dataclass(frozen=True)
class DownloadLink:
    media: Media
    url: str
    expires_at: datetime


async def download_link(*, resources: Resources, actor: Actor, media_id: uuid.UUID) -> DownloadLink:
    """A short-lived presigned URL of an original, for someone who may read its case."""
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
    expires_s = resources.settings.uploads.presigned_url_seconds
    url = await resources.store.presigned_get(
        media.storage_key, expires_s=expires_s, filename=media.filename, content_type=media.content_type
    )
    return DownloadLink(media=media, url=url, expires_at=datetime.now(UTC) + timedelta(seconds=expires_s))
