"""Media intake: sniff, probe, stream to S3 with its SHA-256, then register; reading media back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.db.models import Case, Media
from aima.errors import EmptyUpload, NotFound, UploadTooLarge
from aima.media.probe import MediaProbe, probe_file
from aima.media.sniff import SNIFF_BYTES, SniffedType, sniff
from aima.metrics import UPLOADED_BYTES
from aima.resources import Resources
from aima.services.access import Actor, CaseAccess, case_access, member_role_of, readable_cases
from aima.services.cases import get_case
from aima.storage import original_key

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024


class UploadedFile(Protocol):
    """What the GraphQL layer hands over: Starlette's `UploadFile` fits."""

    filename: str | None
    file: IO[bytes]

    async def read(self, size: int = -1) -> bytes: ...

    async def seek(self, offset: int) -> None: ...


def display_name(filename: str | None) -> str:
    """Keep the client's file name for display only: no path parts, no control characters, bounded."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload"


async def _chunks(upload: UploadedFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


async def upload_media(*, resources: Resources, actor: Actor, case_id: uuid.UUID, upload: UploadedFile) -> Media:
    """Register an upload as media of a case. Nothing is stored unless everything succeeds."""
    async with resources.sessions() as session:
        case = await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.EDITOR)

    size = getattr(upload, "size", None)
    if isinstance(size, int) and size > resources.settings.max_upload_bytes:
        raise UploadTooLarge(resources.settings.max_upload_bytes)  # refused before decoding anything
    await upload.seek(0)
    head = await upload.read(SNIFF_BYTES)
    if not head:
        raise EmptyUpload()
    sniffed = sniff(head)
    probe = await asyncio.to_thread(_probe_upload, upload.file, sniffed)
    await upload.seek(0)

    media_id = uuid.uuid4()
    key = original_key(case.id, media_id)
    stored = await resources.store.put_stream(
        key,
        _chunks(upload),
        content_type=probe.content_type,
        max_bytes=resources.settings.max_upload_bytes,
        metadata={"media-id": str(media_id), "case-id": str(case.id)},
    )
    media = Media(
        id=media_id,
        case_id=case.id,
        uploaded_by=actor.user_id,
        filename=display_name(upload.filename),
        kind=str(probe.kind),
        content_type=probe.content_type,
        format=probe.format,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        storage_key=key,
        probe=probe.model_dump(mode="json"),
    )
    try:
        async with resources.sessions() as session:
            session.add(media)
            await session.commit()
    except BaseException:
        await asyncio.shield(_remove_if_unregistered(resources, media_id, key))
        raise
    UPLOADED_BYTES.inc(stored.size_bytes)
    logger.info("stored media %s (%s, %d bytes) in case %s", media_id, probe.content_type, stored.size_bytes, case.id)
    return media


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


def _probe_upload(file: IO[bytes], sniffed: SniffedType) -> MediaProbe:
    with _local_path(file) as path:
        return probe_file(path, sniffed)


@contextlib.contextmanager
def _local_path(file: IO[bytes]) -> Iterator[Path]:
    """A path naming the spooled upload, for decoders that want one; a temporary copy where there is none."""
    rollover = getattr(file, "rollover", None)
    if callable(rollover):
        rollover()  # a SpooledTemporaryFile still in memory moves to its temporary file
    file.flush()
    try:
        proc_path = Path(f"/proc/self/fd/{file.fileno()}")
    except (OSError, io.UnsupportedOperation):
        proc_path = None
    if proc_path is not None and proc_path.exists():
        yield proc_path
        return
    file.seek(0)
    with tempfile.NamedTemporaryFile(prefix="aima-upload-") as copy:
        shutil.copyfileobj(file, copy)
        copy.flush()
        yield Path(copy.name)


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
