"""The S3 object store for originals and derived files.

Uploads are streamed: at most one part is in memory at a time, the SHA-256 is computed on the way, and a failed or
refused upload leaves no object and no dangling multipart upload behind. Where the bucket has object lock (and so
versions), deleting removes every version, lifting the legal holds of originals.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aima.errors import AimaError, BackendUnavailable, EmptyUpload, UploadTooLarge

logger = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_GONE_UPLOAD = {"NoSuchUpload", "404", "NotFound"}
#: Keys one DeleteObjects request may name at most (S3's limit).
DELETE_BATCH = 1000
#: Legal holds lifted at once while deleting (S3 has no batch form of PutObjectLegalHold).
LIFTS_IN_FLIGHT = 16
#: Parts of one streamed upload travelling to S3 at once, while the next part arrives.
PARTS_IN_FLIGHT = 2


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str


def original_key(case_id: uuid.UUID, media_id: uuid.UUID) -> str:
    """Where an original lives; derived from ids only, never from anything the client sent."""
    return f"cases/{case_id}/media/{media_id}/original"


@dataclass(frozen=True)
class StoredVersion:
    """One object under a prefix; in a versioned (object-locked) bucket, one version or delete marker."""

    key: str
    #: None in an unversioned bucket.
    version_id: str | None
    modified: datetime


@dataclass(frozen=True)
class PendingMultipart:
    key: str
    upload_id: str
    #: When S3 says it started (None when the server does not say).
    initiated: datetime | None


@dataclass(frozen=True)
class StoredPart:
    number: int
    etag: str
    size_bytes: int


class ObjectStore:
    def __init__(self, client: Any, bucket: str, *, part_size: int, presigner: Any | None = None) -> None:
        """`client` is an open aioboto3 S3 client (its type is generated at run time, hence `Any`); `presigner`, when
        given, signs URLs for clients that reach S3 under another address than this process does."""
        self._s3 = client
        self._presigner = presigner or client
        self.bucket = bucket
        self.part_size = part_size
        #: Whether the bucket has object lock; set by `ensure_bucket` / `detect_locking`.
        self.locking = False
        #: Entries each listing request asks for; None: the server's default (S3's, and its most, is 1000).
        self.page_size: int | None = None

    async def presigned_get(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str:
        """A URL that reads one object for `expires_s` seconds, optionally as a download with this file name."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            safe = filename.replace('"', "").replace("\\", "")
            params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
        if content_type is not None:
            params["ResponseContentType"] = content_type
        url: str = await self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        return url

    async def internal_get_url(self, key: str, *, expires_s: int) -> str:
        """A presigned URL for this host's own readers (probing children), at the address this process uses."""
        url: str = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    async def start_multipart(self, key: str, *, content_type: str, metadata: dict[str, str]) -> str:
        """A multipart upload of an original (a legal hold where the bucket has object lock)."""
        extra: dict[str, Any] = {"ObjectLockLegalHoldStatus": "ON"} if self.locking else {}
        created = await self._s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, Metadata=metadata, **extra
        )
        upload_id: str = created["UploadId"]
        return upload_id

    async def presigned_part_urls(self, key: str, upload_id: str, numbers: list[int], *, expires_s: int) -> list[str]:
        """URLs to which a client PUTs parts of a multipart upload directly."""
        return [
            await self._presigner.generate_presigned_url(
                "upload_part",
                Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                ExpiresIn=expires_s,
            )
            for number in numbers
        ]

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts of a multipart upload that have arrived, by number."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            answer = await self._s3.list_parts(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000
            )
            parts.extend(
                StoredPart(number=int(p["PartNumber"]), etag=p["ETag"], size_bytes=int(p["Size"]))
                for p in answer.get("Parts", [])
            )
            if not answer.get("IsTruncated"):
                return sorted(parts, key=lambda part: part.number)
            marker = int(answer["NextPartNumberMarker"])

    async def complete_multipart(self, key: str, upload_id: str, parts: list[StoredPart]) -> None:
        """Join the parts; never over an existing object."""
        await self._s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
            IfNoneMatch="*",
        )

    async def abort_multipart(self, key: str, upload_id: str, *, best_effort: bool = True) -> bool:
        """Abort a multipart upload, with its stored parts; returns whether this call aborted it.

        False when S3 no longer knows the upload (aborted or completed already). Any other failure is logged and
        answered with False, or with `best_effort=False` raised.
        """
        try:
            await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _GONE_UPLOAD:
                logger.debug("multipart upload %s of %s was gone already", upload_id, key)
                return False
            if not best_effort:
                raise
            logger.exception("could not abort multipart upload %s of %s", upload_id, key)
            return False
        return True

    async def hash_object(self, key: str) -> StoredObject:
        """Read an object back and compute its SHA-256 and size (hashing off the event loop)."""
        digest = hashlib.sha256()
        size = 0
        answer = await self._s3.get_object(Bucket=self.bucket, Key=key)
        body = answer["Body"]
        try:
            async for chunk in body.iter_chunks(4 * 1024 * 1024):
                size += len(chunk)
                await asyncio.to_thread(digest.update, chunk)
        finally:
            body.close()
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest())

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing, with object lock where the server supports it."""
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                await self._s3.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
                logger.info("created bucket %s with object lock", self.bucket)
            except ClientError as exc:
                logger.warning("the S3 server refused object lock (%s); originals are protected by write checks", exc)
                await self._s3.create_bucket(Bucket=self.bucket)
                logger.info("created bucket %s", self.bucket)
        await self.detect_locking()

    async def detect_locking(self) -> None:
        """Whether the bucket has object lock (and so versioning): originals then get a legal hold."""
        try:
            answer = await self._s3.get_object_lock_configuration(Bucket=self.bucket)
            self.locking = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError:
            self.locking = False

    async def ping(self) -> None:
        await self._s3.head_bucket(Bucket=self.bucket)

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        max_bytes: int,
        metadata: dict[str, str] | None = None,
        protect: bool = False,
    ) -> StoredObject:
        """Store a stream under `key`: one PUT when it fits in a part, a multipart upload otherwise.

        Up to `PARTS_IN_FLIGHT` parts travel to S3 while the next one arrives. With `protect` (originals), an
        existing object is never overwritten, and where the bucket has object lock the object gets a legal hold.
        """
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        sending: list[asyncio.Task[dict[str, Any]]] = []
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": metadata or {}}
        if protect and self.locking:
            extra["ObjectLockLegalHoldStatus"] = "ON"
        finish: dict[str, Any] = {"IfNoneMatch": "*"} if protect else {}
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)

        async def send(number: int, body: bytes) -> dict[str, Any]:
            try:
                assert upload_id is not None
                return await self._upload_part(key, upload_id, number, body)
            finally:
                slots.release()

        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                digest.update(chunk)
                buffer += chunk
                if len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
                        upload_id = created["UploadId"]
                    part, buffer = buffer, bytearray()  # hand the whole buffer over: no copy
                    await slots.acquire()
                    sending.append(asyncio.create_task(send(len(sending) + 1, bytes(part))))
            if size == 0:
                raise EmptyUpload()
            if upload_id is None:
                await self._s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer), **extra, **finish)
            else:
                if buffer:
                    await slots.acquire()
                    sending.append(asyncio.create_task(send(len(sending) + 1, bytes(buffer))))
                parts = list(await asyncio.gather(*sending))
                await self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **finish
                )
        except BaseException:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            if upload_id is not None:
                await self.abort_multipart(key, upload_id)
            raise
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest())

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        answer = await self._s3.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def download_to(self, key: str, path: Path) -> None:
        """Copy an object to a local file, streaming; file writes happen off the event loop."""
        try:
            answer = await self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                logger.error("object %s is missing from bucket %s", key, self.bucket)
                raise AimaError("The stored original is missing.", code="ORIGINAL_MISSING") from exc
            logger.warning("object store could not read %s: %s", key, exc)
            raise BackendUnavailable("The object store is unavailable.") from exc
        except BotoCoreError as exc:
            logger.warning("object store could not read %s: %s", key, exc)
            raise BackendUnavailable("The object store is unavailable.") from exc
        body = answer["Body"]
        try:
            if answer.get("ContentLength", self.part_size + 1) <= self.part_size:
                await asyncio.to_thread(path.write_bytes, await body.read())  # small: one hop to a thread
                return
            out = await asyncio.to_thread(path.open, "wb")
            try:
                async for chunk in body.iter_chunks(1024 * 1024):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                await asyncio.to_thread(out.close)
        finally:
            body.close()

    async def read(self, key: str) -> bytes:
        answer = await self._s3.get_object(Bucket=self.bucket, Key=key)
        body = answer["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data

    async def delete(self, key: str) -> None:
        """Remove an object for good: in a versioned (object-locked) bucket every version, its legal hold lifted."""
        if not self.locking:
            await self._s3.delete_object(Bucket=self.bucket, Key=key)
            return
        await self.delete_versions(item for item in await self._versions(key) if item.key == key)

    async def delete_versions(self, items: Iterable[StoredVersion]) -> int:
        """Delete objects (exactly the versions given, as `listing` names them) in batches of `DELETE_BATCH`,
        lifting the legal hold of those S3 refuses to delete for one; returns how many distinct keys went.

        Raises `RuntimeError` when S3 kept any of them.
        """
        pending = list(items)
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start : start + DELETE_BATCH]
            refused = await self._delete_batch(batch)
            held = [item for item, code in refused if code == "AccessDenied" and item.version_id is not None]
            if held:  # originals under a legal hold: only a deletion through AIMA lifts it
                await self._lift_holds(held)
            refused = [*(r for r in refused if r[0] not in held), *(await self._delete_batch(held) if held else [])]
            if refused:
                item, code = refused[0]
                raise RuntimeError(f"S3 kept {len(refused)} of {len(batch)} objects, the first {item.key}: {code}")
        return len({item.key for item in pending})

    async def _delete_batch(self, batch: list[StoredVersion]) -> list[tuple[StoredVersion, str]]:
        """One DeleteObjects request; returns the items S3 refused, with its error code."""
        objects = [{"Key": i.key, "VersionId": i.version_id} if i.version_id else {"Key": i.key} for i in batch]
        answer = await self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        by_version = {(i.key, i.version_id): i for i in batch}
        refused = []
        for error in answer.get("Errors", []):
            key, version_id = error.get("Key"), error.get("VersionId")
            item = by_version.get((key, version_id)) or by_version.get((key, None))
            if item is not None:
                refused.append((item, str(error.get("Code"))))
        if answer.get("Errors") and not refused:
            raise RuntimeError(f"S3 refused deletions it did not name: {answer['Errors'][:3]}")
        return refused

    async def _lift_holds(self, items: list[StoredVersion]) -> None:
        """Turn off the legal hold of each version, `LIFTS_IN_FLIGHT` requests at a time."""
        slots = asyncio.Semaphore(LIFTS_IN_FLIGHT)

        async def lift(item: StoredVersion) -> None:
            async with slots:
                await self._s3.put_object_legal_hold(
                    Bucket=self.bucket, Key=item.key, VersionId=item.version_id, LegalHold={"Status": "OFF"}
                )

        await asyncio.gather(*(lift(item) for item in items))

    async def legal_hold(self, key: str, version_id: str | None = None) -> bool:
        """Whether an object (version) is under a legal hold."""
        if not self.locking:
            return False
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        try:
            answer = await self._s3.get_object_legal_hold(**params)
        except ClientError:
            return False
        return bool(answer.get("LegalHold", {}).get("Status") == "ON")

    async def listing(self, prefix: str) -> list[StoredVersion]:
        """Everything under `prefix` with when it was written: every object, and where the bucket keeps versions
        (object lock), every version and delete marker. What `delete_versions` takes."""
        return await self._versions(prefix) if self.locking else await self._objects(prefix)

    async def all_versions(self, prefix: str = "") -> list[str]:
        """Keys of every object version and delete marker under `prefix` (what a "nothing is left" check needs),
        whether or not the bucket has object lock."""
        return [item.key for item in await self._versions(prefix)]

    async def exists(self, key: str) -> bool:
        try:
            await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys of the current objects under `prefix`."""
        return [item.key for item in await self._objects(prefix)]

    async def _objects(self, prefix: str) -> list[StoredVersion]:
        """The current objects under `prefix` (version ids left out)."""
        found: list[StoredVersion] = []
        async for page in self._pages("list_objects_v2", prefix):
            found.extend(StoredVersion(o["Key"], None, o["LastModified"]) for o in page.get("Contents", []))
        return found

    async def _versions(self, prefix: str) -> list[StoredVersion]:
        """Every object version and delete marker under `prefix`."""
        found: list[StoredVersion] = []
        async for page in self._pages("list_object_versions", prefix):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                found.append(StoredVersion(item["Key"], item["VersionId"], item["LastModified"]))
        return found

    def _pages(self, operation: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """The answers of a listing `operation` under `prefix`, one request each, `page_size` entries each."""
        config = {"PageSize": self.page_size} if self.page_size is not None else {}
        pages: AsyncIterator[dict[str, Any]] = self._s3.get_paginator(operation).paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig=config
        )
        return pages

    async def multipart_uploads(self, prefix: str = "") -> list[PendingMultipart]:
        """Every multipart upload in progress under `prefix`, page by page."""
        found: list[PendingMultipart] = []
        async for page in self._pages("list_multipart_uploads", prefix):
            found.extend(
                PendingMultipart(key=u["Key"], upload_id=u["UploadId"], initiated=u.get("Initiated"))
                for u in page.get("Uploads", [])
            )
        return found

    async def pending_multipart_uploads(self, prefix: str = "") -> list[str]:
        """Keys of the multipart uploads in progress under `prefix`."""
        return [upload.key for upload in await self.multipart_uploads(prefix)]

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes of an object from `start`."""
        answer = await self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
        body = answer["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data
