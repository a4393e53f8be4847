"""Result documents in MongoDB (Beanie): one per (media, analyzer, analyzer version)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pymongo
from beanie import Document
from pydantic import BaseModel, Field


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ResultFile(BaseModel):
    """A file stored beside a result (a face crop), at ``cases/{case}/media/{media}/results/{analyzer}/{name}``."""

    name: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str


class AnalysisResultDocument(Document):
    """A structured analyzer result; re-running the same analyzer version replaces it."""

    media_id: str
    case_id: str
    analyzer: str
    analyzer_version: str
    task_id: str
    payload: dict[str, Any]
    #: The files the analyzer made beside the result, for the API to hand out (presigned).
    files: list[ResultFile] = Field(default_factory=list)
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
