"""Resumable uploads: the client sends parts straight to S3 through presigned URLs, then asks to complete.

`start_upload` opens an S3 multipart upload under the key the media will have and hands out part URLs;
`upload_status` says which parts arrived (after a broken connection, send only the missing ones);
`complete_upload` checks every part, joins them, re-hashes the whole object from S3 (the chain of custody starts
from what is stored, not from what the client claims), probes it and registers the media. Uploads not completed
in time are aborted by `sweep_abandoned_uploads`, which the worker runs periodically.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from aima.db.models import Upload
from aima.errors import AimaError, InvalidInput, NotFound
from aima.media.sniff import SNIFF_BYTES, sniff
from aima.resources import Resources
from aima.services.access import Actor, CaseAccess
from aima.services.cases import get_case
from aima.services.media import Registered, display_name, register_stored
from aima.storage import StoredPart, original_key

logger = logging.getLogger(__name__)

#: S3 allows at most this many parts per multipart upload.
MAX_PARTS = 10_000
#: Part URLs handed out per call.
MAX_URLS_PER_CALL = 1000
#: A multipart upload S3 holds without an upload row (a streamed upload whose process died) is removed this late.
ORPHAN_AFTER = timedelta(hours=6)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MIB = 1024 * 1024


class UploadIncomplete(AimaError):
    code = "UPLOAD_INCOMPLETE"


class ChecksumMismatch(AimaError):
    code = "CHECKSUM_MISMATCH"


@dataclass(frozen=True)
class PartUrl:
    number: int
    url: str


@dataclass(frozen=True)
class StartedUpload:
    upload: Upload
    part_count: int
    parts: list[PartUrl]
    urls_expire_at: datetime


@dataclass(frozen=True)
class UploadState:
    upload: Upload
    part_count: int
    received: list[StoredPart]

    @property
    def received_bytes(self) -> int:
        return sum(part.size_bytes for part in self.received)

    @property
    def missing(self) -> list[int]:
        have = {part.number for part in self.received}
        return [n for n in range(1, self.part_count + 1) if n not in have]


def part_plan(size_bytes: int, preferred_part_bytes: int) -> tuple[int, int]:
    """(part size, part count): the preferred size, larger (whole MiB) when the file would need too many parts."""
    part = max(preferred_part_bytes, math.ceil(size_bytes / MAX_PARTS / _MIB) * _MIB)
    return part, max(1, math.ceil(size_bytes / part))


async def start_upload(
    *,
    resources: Resources,
    actor: Actor,
    case_id: uuid.UUID,
    filename: str,
    size_bytes: int,
    sha256: str | None,
) -> StartedUpload:
    settings = resources.settings.uploads
    async with resources.sessions() as session:
        case = await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.EDITOR)
    if not 1 <= size_bytes <= settings.max_resumable_bytes:
        raise InvalidInput(f"sizeBytes must be between 1 and {settings.max_resumable_bytes}.")
    if sha256 is not None and not _SHA256.match(sha256.lower()):
        raise InvalidInput("sha256 must be 64 hexadecimal characters.")
    part_size, part_count = part_plan(size_bytes, settings.resumable_part_bytes)
    media_id = uuid.uuid4()
    key = original_key(case.id, media_id)
    s3_upload_id = await resources.store.start_multipart(
        key,
        content_type="application/octet-stream",
        metadata={"media-id": str(media_id), "case-id": str(case.id)},
    )
    upload = Upload(
        id=uuid.uuid4(),
        case_id=case.id,
        user_id=actor.user_id,
        media_id=media_id,
        storage_key=key,
        s3_upload_id=s3_upload_id,
        filename=display_name(filename),
        size_bytes=size_bytes,
        part_size=part_size,
        expected_sha256=sha256.lower() if sha256 else None,
        state="open",
        created_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(hours=settings.resumable_expiry_hours),
    )
    try:
        async with resources.sessions() as session:
            session.add(upload)
            await session.commit()
    except BaseException:
        await resources.store.abort_multipart(key, s3_upload_id)
        raise
    numbers = list(range(1, min(part_count, MAX_URLS_PER_CALL) + 1))
    parts, expires_at = await _part_urls(resources, upload, numbers)
    logger.info(
        "resumable upload %s started: %d bytes in %d parts into case %s", upload.id, size_bytes, part_count, case.id
    )
    return StartedUpload(upload=upload, part_count=part_count, parts=parts, urls_expire_at=expires_at)


async def _part_urls(resources: Resources, upload: Upload, numbers: list[int]) -> tuple[list[PartUrl], datetime]:
    expires_s = resources.settings.uploads.presigned_url_seconds
    urls = await resources.store.presigned_part_urls(
        upload.storage_key, upload.s3_upload_id, numbers, expires_s=expires_s
    )
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
    return [PartUrl(n, url) for n, url in zip(numbers, urls, strict=True)], expires_at


async def _open_upload(resources: Resources, actor: Actor, upload_id: uuid.UUID) -> Upload:
    """The actor's open upload (an administrator's: anyone's) into a case it may still change."""
    async with resources.sessions() as session:
        upload = await session.get(Upload, upload_id)
        if upload is None or (upload.user_id != actor.user_id and not actor.is_admin):
            raise NotFound("Upload", upload_id)
        await get_case(session=session, actor=actor, case_id=upload.case_id, needed=CaseAccess.EDITOR)
    if upload.state != "open":
        raise InvalidInput(f"This upload is {upload.state}.")
    if upload.expires_at <= datetime.now(UTC):
        raise InvalidInput("This upload has expired; start a new one.")
    return upload


async def part_urls(
    *, resources: Resources, actor: Actor, upload_id: uuid.UUID, numbers: list[int]
) -> tuple[list[PartUrl], datetime]:
    """Fresh URLs for some parts (the first ones expired, or there were more than one call hands out)."""
    upload = await _open_upload(resources, actor, upload_id)
    _, count = part_plan(upload.size_bytes, upload.part_size)
    wanted = sorted(set(numbers))
    if not wanted or len(wanted) > MAX_URLS_PER_CALL or wanted[0] < 1 or wanted[-1] > count:
        raise InvalidInput(f"Ask for 1 to {MAX_URLS_PER_CALL} part numbers between 1 and {count}.")
    return await _part_urls(resources, upload, wanted)


async def upload_status(*, resources: Resources, actor: Actor, upload_id: uuid.UUID) -> UploadState:
    upload = await _open_upload(resources, actor, upload_id)
    _, count = part_plan(upload.size_bytes, upload.part_size)
    received = await resources.store.list_parts(upload.storage_key, upload.s3_upload_id)
    return UploadState(upload=upload, part_count=count, received=received)


async def complete_upload(*, resources: Resources, actor: Actor, upload_id: uuid.UUID) -> Registered:
    """Join the parts, check size and SHA-256 against what is stored, probe, and register the media."""
    state = await upload_status(resources=resources, actor=actor, upload_id=upload_id)
    upload = state.upload
    if state.missing:
        shown = ", ".join(map(str, state.missing[:20])) + (" ..." if len(state.missing) > 20 else "")
        raise UploadIncomplete(f"Parts missing: {shown}. Send them, then complete the upload again.")
    expected = [
        min(upload.part_size, upload.size_bytes - (n - 1) * upload.part_size) for n in range(1, state.part_count + 1)
    ]
    wrong = [p.number for p, size in zip(state.received, expected, strict=False) if p.size_bytes != size]
    if wrong or len(state.received) != state.part_count:
        raise UploadIncomplete(
            f"Parts of the wrong size: {', '.join(map(str, wrong[:20]))}; each part but the last must have "
            f"{upload.part_size} bytes. Send them again, then complete the upload again."
        )
    key = upload.storage_key
    await resources.store.complete_multipart(key, upload.s3_upload_id, state.received[: state.part_count])
    async with resources.sessions() as session:
        await session.execute(update(Upload).where(Upload.id == upload.id).values(state="completed"))
        await session.commit()
    try:
        stored = await resources.store.hash_object(key)  # from what is stored, not from what the client says
        if stored.size_bytes != upload.size_bytes:
            raise UploadIncomplete(f"{stored.size_bytes} bytes arrived, {upload.size_bytes} were announced.")
        if upload.expected_sha256 and stored.sha256 != upload.expected_sha256:
            raise ChecksumMismatch(
                f"The stored file's SHA-256 is {stored.sha256}, not the {upload.expected_sha256} announced; "
                "it was not registered."
            )
        sniff(await resources.store.read_range(key, 0, SNIFF_BYTES))  # refuse what is not media before probing
    except BaseException:
        await resources.store.delete(key)
        raise
    return await register_stored(
        resources=resources,
        actor=actor,
        case_id=upload.case_id,
        media_id=upload.media_id,
        stored=stored,
        filename=upload.filename,
        ingest="resumable",
    )


async def abort_upload(*, resources: Resources, actor: Actor, upload_id: uuid.UUID) -> None:
    upload = await _open_upload(resources, actor, upload_id)
    await _abort(resources, upload)


async def _abort(resources: Resources, upload: Upload) -> None:
    await resources.store.abort_multipart(upload.storage_key, upload.s3_upload_id)
    async with resources.sessions() as session:
        await session.execute(update(Upload).where(Upload.id == upload.id).values(state="aborted"))
        await session.commit()


async def sweep_abandoned_uploads(resources: Resources, *, now: datetime | None = None) -> int:
    """Abort expired open uploads and remove their parts; also multipart uploads S3 holds that no row knows."""
    now = now or datetime.now(UTC)
    async with resources.sessions() as session:
        expired = list(
            (
                await session.execute(
                    select(Upload).where(Upload.state == "open", Upload.expires_at <= now).limit(1000)
                )
            ).scalars()
        )
        known = set((await session.execute(select(Upload.s3_upload_id).where(Upload.state == "open"))).scalars())
    for upload in expired:
        await _abort(resources, upload)
        logger.info("aborted abandoned upload %s of case %s", upload.id, upload.case_id)
    aborted = {u.s3_upload_id for u in expired}
    orphans = 0
    for pending in await resources.store.multipart_uploads("cases/"):
        if pending.upload_id in known or pending.upload_id in aborted:
            continue
        # A streaming upload in flight has no row either: only those older than its longest life are orphans.
        if pending.initiated is not None and now - pending.initiated > ORPHAN_AFTER:
            await resources.store.abort_multipart(pending.key, pending.upload_id)
            orphans += 1
            logger.info("aborted orphaned multipart upload of %s", pending.key)
    return len(expired) + orphans
