"""Objects tests start from, stored the way the application stores them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from aima.db.models import Media
from aima.resources import Resources
from aima.storage import original_key


async def stored_original(
    resources: Resources,
    data: bytes,
    *,
    case_id: uuid.UUID,
    uploaded_by: uuid.UUID,
    filename: str = "a.jpg",
    kind: str = "image",
    fmt: str = "jpeg",
    content_type: str = "image/jpeg",
    probe: dict[str, Any] | None = None,
) -> Media:
    """`data` stored as the original of a new media item, and the item's `Media` row (size and SHA-256 as stored).

    The row is not added to a session: the caller adds it after its user and case, and before the rows that refer
    to it (there are no relationship()s to order them).
    """
    media_id = uuid.uuid4()
    key = original_key(case_id, media_id)

    async def body() -> AsyncIterator[bytes]:
        yield data

    stored = await resources.store.put_stream(key, body(), content_type=content_type, max_bytes=len(data))
    return Media(
        id=media_id,
        case_id=case_id,
        uploaded_by=uploaded_by,
        filename=filename,
        kind=kind,
        content_type=content_type,
        format=fmt,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        storage_key=key,
        probe=probe if probe is not None else {},
    )
