"""Result documents in MongoDB (Beanie): one per (media, analyzer, analyzer version)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pymongo
from beanie import Document
from pydantic import Field


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AnalysisResultDocument(Document):
    """A structured analyzer result; re-running the same analyzer version replaces it."""

    media_id: str
    case_id: str
    analyzer: str
    analyzer_version: str
    task_id: str
    payload: dict[str, Any]
    created_at: datetime = Field(default_factory=_utcnow)
    updated_at: datetime = Field(default_factory=_utcnow)

    class Settings:
        name = "analysis_results"
        indexes = [
            pymongo.IndexModel(
                [
                    ("media_id", pymongo.ASCENDING),
                    ("analyzer", pymongo.ASCENDING),
                    ("analyzer_version", pymongo.ASCENDING),
                ],
                unique=True,
                name="uq_media_analyzer_version",
            ),
            pymongo.IndexModel([("case_id", pymongo.ASCENDING)], name="ix_case"),
        ]


DOCUMENT_MODELS: list[type[Document]] = [AnalysisResultDocument]
