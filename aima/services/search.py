"""Semantic search in a case: what was said or written, found by meaning rather than by exact words.

Analyzers hand the worker searchable texts (transcript segments, on-screen text), which it embeds with the installed
`Embedder` into ``text_embeddings``, each row naming its case, media, analyzer and key. A query is embedded with the
same embedder and answered by the nearest rows of the case, most similar first.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymilvus.exceptions import MilvusException
from sqlalchemy import select

from aima.db.models import Media
from aima.db.vectors import TEXT_COLLECTION, TEXT_VECTORS
from aima.errors import AimaError, BackendUnavailable, InvalidInput
from aima.resources import Resources
from aima.services.access import Actor
from aima.services.cases import get_case

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_HITS = 100
_ANALYZER = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class SearchUnavailable(AimaError):
    """No text embedder is installed (or it does not fit the stored vectors): the case cannot be searched by
    meaning."""

    code = "SEARCH_UNAVAILABLE"


@dataclass(frozen=True)
class SearchHit:
    media: Media
    analyzer: str
    key: str
    text: str
    start_s: float | None
    end_s: float | None
    #: Cosine similarity of the query and the text, from -1 to 1.
    score: float


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def search_case(
    *,
    resources: Resources,
    actor: Actor,
    case_id: uuid.UUID,
    text: str,
    first: int = 20,
    analyzers: Sequence[str] | None = None,
) -> list[SearchHit]:
    """The case's texts nearest in meaning to `text` (of the named analyzers only, when given), best first."""
    async with resources.sessions() as session:
        await get_case(session=session, actor=actor, case_id=case_id)
    query = " ".join(text.split())
    if not query or len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"The search text must have between 1 and {MAX_QUERY_CHARS} characters.")
    if not 1 <= first <= MAX_HITS:
        raise InvalidInput(f"first must be between 1 and {MAX_HITS}.")
    names = list(dict.fromkeys(analyzers or ()))
    if any(not _ANALYZER.match(name) for name in names):
        raise InvalidInput("Analyzer names contain only letters, digits and . _ : -")
    embedder = resources.analyzers.embedder()
    if embedder is None:
        raise SearchUnavailable(
            "Semantic search needs a text embedder plugin (for example aima-minilm); none is installed."
        )
    vectors = await asyncio.to_thread(embedder.embed, [query])
    dimension = TEXT_VECTORS.dimension
    if len(vectors) != 1 or len(vectors[0]) != dimension:
        raise SearchUnavailable(
            f"The text embedder {embedder.name!r} makes vectors of {len(vectors[0]) if vectors else 0} dimensions; "
            f"the stored texts have {dimension}."
        )
    expression = f'case_id == "{case_id}"'
    if names:
        expression += " and analyzer in [" + ", ".join(f'"{name}"' for name in names) + "]"
    try:
        answer: list[list[dict[str, Any]]] = await resources.milvus.search(
            TEXT_COLLECTION,
            data=[list(vectors[0])],
            filter=expression,
            limit=first,
            output_fields=["media_id", "analyzer", "key", "text", "start_s", "end_s"],
            consistency_level="Strong",
        )
    except (MilvusException, OSError) as exc:
        raise BackendUnavailable("The vector store is unavailable.") from exc
    hits = answer[0] if answer else []
    media_ids = {uuid.UUID(str(hit["entity"]["media_id"])) for hit in hits}
    async with resources.sessions() as session:
        rows = await session.scalars(select(Media).where(Media.id.in_(media_ids), Media.case_id == case_id))
        media = {row.id: row for row in rows}
    found = []
    for hit in hits:
        entity = hit["entity"]
        row = media.get(uuid.UUID(str(entity["media_id"])))
        if row is None:  # deleted since; its vectors are on their way out
            continue
        found.append(
            SearchHit(
                media=row,
                analyzer=str(entity.get("analyzer", "")),
                key=str(entity.get("key", "")),
                text=str(entity.get("text", "")),
                start_s=_number(entity.get("start_s")),
                end_s=_number(entity.get("end_s")),
                score=float(hit["distance"]),
            )
        )
    logger.info("search in case %s: %d hits", case_id, len(found))
    return found
