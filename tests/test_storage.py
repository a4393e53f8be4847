"""Streaming uploads to the real S3 server: parts, hashing, refusal and cleanup."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from aima.errors import EmptyUpload, UploadTooLarge
from aima.resources import Resources
from aima.storage import ObjectStore, original_key


async def chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def store_of(resources: Resources) -> ObjectStore:
    return ObjectStore(resources.store._s3, resources.store.bucket, part_size=5 * 1024 * 1024)


async def test_a_large_stream_is_stored_in_parts_with_its_hash(resources: Resources) -> None:
    store = store_of(resources)
    data = os.urandom(12 * 1024 * 1024 + 123)
    key = f"tests/{uuid.uuid4()}"
    stored = await store.put_stream(key, chunks(data), content_type="video/mp4", max_bytes=len(data))
    assert stored.size_bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read(key) == data
    await store.delete(key)
    assert not await store.exists(key)


async def test_a_small_stream_is_one_put(resources: Resources) -> None:
    key = f"tests/{uuid.uuid4()}"
    stored = await resources.store.put_stream(key, chunks(b"abc"), content_type="image/png", max_bytes=10)
    assert stored.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert await resources.store.pending_multipart_uploads(key) == []


@pytest.mark.parametrize("size", [100, 11 * 1024 * 1024])
async def test_a_stream_over_the_limit_leaves_nothing(resources: Resources, size: int) -> None:
    store = store_of(resources)
    key = f"tests/{uuid.uuid4()}"
    with pytest.raises(UploadTooLarge):
        await store.put_stream(key, chunks(b"x" * size), content_type="image/png", max_bytes=size - 1)
    assert not await store.exists(key)
    assert await store.pending_multipart_uploads(key) == []


async def test_an_empty_stream_is_refused(resources: Resources) -> None:
    key = f"tests/{uuid.uuid4()}"
    with pytest.raises(EmptyUpload):
        await resources.store.put_stream(key, chunks(b""), content_type="image/png", max_bytes=10)
    assert not await resources.store.exists(key)


def test_keys_come_from_ids_only() -> None:
    case_id, media_id = uuid.uuid4(), uuid.uuid4()
    assert original_key(case_id, media_id) == f"cases/{case_id}/media/{media_id}/original"
