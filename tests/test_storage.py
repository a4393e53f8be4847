"""The object store against the real S3 server: streaming uploads (parts, hashing, refusal and cleanup), listing,
deleting every version of what is under a legal hold, and multipart uploads."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from botocore.exceptions import ClientError

from aima.errors import EmptyUpload, UploadTooLarge
from aima.resources import Resources
from aima.storage import ObjectStore, original_key


async def chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def store_of(resources: Resources, **changes: object) -> ObjectStore:
    """The session's store with 5 MiB parts (S3's smallest), and any other attribute changed."""
    store = copy.copy(resources.store)
    store.part_size = 5 * 1024 * 1024
    for name, value in changes.items():
        setattr(store, name, value)
    return store


async def put(store: ObjectStore, key: str, data: bytes, *, protect: bool = False) -> None:
    await store.put_stream(key, chunks(data), content_type="image/png", max_bytes=len(data), protect=protect)


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


async def test_deleting_versions_lifts_legal_holds_and_leaves_nothing(resources: Resources) -> None:
    store = resources.store
    assert store.locking  # SeaweedFS has object lock, hence versions and legal holds
    prefix = f"tests/{uuid.uuid4()}/"
    original, derived = f"{prefix}original", f"{prefix}derived"
    await put(store, original, b"original", protect=True)
    await put(store, derived, b"first")
    await put(store, derived, b"second")
    assert await store.legal_hold(original)

    listed = await store.listing(prefix)
    assert sorted(item.key for item in listed) == [derived, derived, original]
    assert all(item.version_id and item.modified.tzinfo for item in listed)
    assert await store.delete_versions(listed) == 2
    assert await store.all_versions(prefix) == []
    assert await store.listing(prefix) == []


async def test_delete_removes_every_version_of_exactly_its_key(resources: Resources) -> None:
    store = resources.store
    prefix = f"tests/{uuid.uuid4()}/"
    original, neighbour = f"{prefix}original", f"{prefix}original-2"
    await put(store, original, b"first", protect=True)
    await put(store, neighbour, b"next door", protect=True)
    await store.delete(original)
    assert await store.all_versions(prefix) == [neighbour]
    await store.delete(neighbour)
    assert await store.all_versions(prefix) == []


async def test_without_versions_the_listing_names_current_objects(resources: Resources) -> None:
    unversioned = store_of(resources, locking=False)
    prefix = f"tests/{uuid.uuid4()}/"
    await put(unversioned, f"{prefix}a", b"first")
    await put(unversioned, f"{prefix}a", b"second")
    listed = await unversioned.listing(prefix)
    assert [(item.key, item.version_id) for item in listed] == [(f"{prefix}a", None)]
    assert await unversioned.keys(prefix) == [f"{prefix}a"]
    await resources.store.delete_versions(await resources.store.listing(prefix))


async def test_listings_go_on_past_the_first_page(resources: Resources) -> None:
    paged = store_of(resources, page_size=2)
    prefix = f"tests/{uuid.uuid4()}/"
    for name in "abc":
        await put(paged, f"{prefix}{name}", b"first")
        await put(paged, f"{prefix}{name}", b"second")
    started = {
        await paged.start_multipart(f"{prefix}upload-{n}", content_type="image/png", metadata={}) for n in range(5)
    }
    try:
        uploads = await paged.multipart_uploads(prefix)
        assert sorted(u.upload_id for u in uploads) == sorted(started)
        assert all(u.initiated is not None for u in uploads)
        assert len(await paged.pending_multipart_uploads(prefix)) == 5
        assert sorted(await paged.keys(prefix)) == [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
        assert len(set(await paged.listing(prefix))) == 6
        assert len(await paged.all_versions(prefix)) == 6
        assert await paged.delete_versions(await paged.listing(prefix)) == 3
    finally:
        for upload in await paged.multipart_uploads(prefix):
            await paged.abort_multipart(upload.key, upload.upload_id)
    assert await paged.multipart_uploads(prefix) == []
    assert await paged.all_versions(prefix) == []


async def test_aborting_a_gone_upload_says_so(resources: Resources, caplog: pytest.LogCaptureFixture) -> None:
    store = resources.store
    key = f"tests/{uuid.uuid4()}"
    upload_id = await store.start_multipart(key, content_type="image/png", metadata={})
    assert await store.abort_multipart(key, upload_id, best_effort=False)
    assert await store.pending_multipart_uploads(key) == []
    assert not await store.abort_multipart(key, "no-such-upload", best_effort=False)
    with caplog.at_level(logging.ERROR, logger="aima.storage"):
        assert not await store.abort_multipart(key, "no-such-upload")
    assert not caplog.records  # a gone upload is no failure


async def test_a_failed_abort_is_logged_or_raised(resources: Resources, caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = store_of(resources, bucket=f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.ERROR, logger="aima.storage"):
        assert not await elsewhere.abort_multipart("tests/x", "some-upload")
    assert "could not abort" in caplog.text
    with pytest.raises(ClientError):
        await elsewhere.abort_multipart("tests/x", "some-upload", best_effort=False)
