"""Milvus collections for embeddings, created at startup.

Milvus Lite's async client cannot create collections or indexes, so this module uses the sync client, called from a
thread by `aima.resources`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pymilvus import DataType, MilvusClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorCollection:
    name: str
    dimension: int
    description: str


#: Where the installed `Embedder` stores the vectors of analyzers' searchable texts.
TEXT_VECTORS = VectorCollection("text_embeddings", 384, "Text embeddings of transcripts, OCR text and descriptions")
TEXT_COLLECTION = TEXT_VECTORS.name
#: Every collection AIMA writes to. Rows carry the case, media and task they came from, so deletion and
#: idempotent re-runs can address them.
COLLECTIONS: tuple[VectorCollection, ...] = (
    VectorCollection("face_embeddings", 512, "ArcFace face embeddings"),
    VectorCollection("voice_embeddings", 256, "Speaker embeddings per speech segment"),
    TEXT_VECTORS,
)


def collection_named(name: str) -> VectorCollection | None:
    """The collection of this name, or None when AIMA has none."""
    return next((spec for spec in COLLECTIONS if spec.name == name), None)


def ensure_collections(client: MilvusClient, collections: tuple[VectorCollection, ...] = COLLECTIONS) -> list[str]:
    """Create missing collections with their index and load every one; return the names created.

    Milvus Lite brings collections back unloaded after a restart, and an unloaded collection refuses searches.
    """
    existing = set(client.list_collections())
    created = []
    for spec in collections:
        if spec.name in existing:
            client.load_collection(spec.name)
            continue
        schema = client.create_schema(auto_id=False, enable_dynamic_field=True, description=spec.description)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("case_id", DataType.VARCHAR, max_length=36)
        schema.add_field("media_id", DataType.VARCHAR, max_length=36)
        schema.add_field("task_id", DataType.VARCHAR, max_length=36)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dimension)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        client.create_collection(spec.name, schema=schema, index_params=index)
        created.append(spec.name)
        logger.info("created milvus collection %s (dim %d)", spec.name, spec.dimension)
    return created
