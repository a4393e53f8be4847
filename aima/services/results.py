"""Analyzer results in MongoDB, keyed by (media, analyzer, analyzer version).

Reads and writes go through the collection of the caller's `Resources` rather than Beanie's class-level client
binding, so that several sets of clients (an API and a worker in one test process) never share an event loop.
The documents are validated by the Beanie model, which also declares the indexes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from aima.db.documents import AnalysisResultDocument, ResultFile
from aima.errors import BackendUnavailable

logger = logging.getLogger(__name__)


async def upsert_result(
    collection: AsyncCollection[dict[str, Any]],
    *,
    media_id: uuid.UUID,
    case_id: uuid.UUID,
    analyzer: str,
    analyzer_version: str,
    task_id: uuid.UUID,
    payload: dict[str, Any],
    files: Sequence[ResultFile] = (),
) -> None:
    """Store a result with the files stored beside it; a re-run of the same analyzer version replaces it instead of
    adding a second one. A store that fails raises `BackendUnavailable` (the task is tried again)."""
    now = datetime.now(UTC)
    update = {
        "case_id": str(case_id),
        "task_id": str(task_id),
        "payload": payload,
        "files": [file.model_dump() for file in files],
        "updated_at": now,
    }
    try:
        await collection.update_one(
            {"media_id": str(media_id), "analyzer": analyzer, "analyzer_version": analyzer_version},
            {"$set": update, "$setOnInsert": {"created_at": now}},
            upsert=True,
        )
    except PyMongoError as exc:
        logger.warning("could not store the %s result of media %s: %r", analyzer, media_id, exc)
        raise BackendUnavailable("The result store is unavailable.") from exc


async def results_for_media(
    collection: AsyncCollection[dict[str, Any]], media_ids: list[str]
) -> dict[str, list[AnalysisResultDocument]]:
    """All results of several media at once (one query, for a DataLoader)."""
    found: dict[str, list[AnalysisResultDocument]] = {media_id: [] for media_id in media_ids}
    cursor = collection.find({"media_id": {"$in": media_ids}}).sort([("analyzer", 1), ("analyzer_version", 1)])
    async for raw in cursor:
        document = AnalysisResultDocument.model_validate(raw)
        found[document.media_id].append(document)
    return found
