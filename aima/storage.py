"""The S3 object store for originals and derived files.

Uploads are streamed: at most one part is in memory at a time, the SHA-256 is computed on the way, and a failed or
refused upload leaves no object and no dangling multipart upload behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aima.errors import AimaError, BackendUnavailable, EmptyUpload, UploadTooLarge

logger = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str


def original_key(case_id: uuid.UUID, media_id: uuid.UUID) -> str:
    """Where an original lives; derived from ids only, never from anything the client sent."""
    return f"cases/{case_id}/media/{media_id}/original"


class ObjectStore:
    def __init__(self, client: Any, bucket: str, *, part_size: int) -> None:
        """`client` is an open aioboto3 S3 client (its type is generated at run time, hence `Any`)."""
        self._s3 = client
        self.bucket = bucket
        self.part_size = part_size

    async def ensure_bucket(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self._s3.create_bucket(Bucket=self.bucket)
            logger.info("created bucket %s", self.bucket)

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
    ) -> StoredObject:
        """Store a stream under `key`: one PUT when it fits in a part, a multipart upload otherwise."""
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        extra = {"ContentType": content_type, "Metadata": metadata or {}}
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                digest.update(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
                        upload_id = created["UploadId"]
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
            if size == 0:
                raise EmptyUpload()
            if upload_id is None:
                await self._s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer), **extra)
            else:
                if buffer:
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
                await self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                await self._abort(key, upload_id)
            raise
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest())

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        answer = await self._s3.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            logger.exception("could not abort multipart upload %s of %s", upload_id, key)

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
        await self._s3.delete_object(Bucket=self.bucket, Key=key)

    async def exists(self, key: str) -> bool:
        try:
            await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    async def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return found

    async def pending_multipart_uploads(self, prefix: str = "") -> list[str]:
        answer = await self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
