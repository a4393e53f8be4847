"""What an analysis leaves beside its result document: vectors in Milvus and files in S3.

An analyzer returns them in an `AnalysisOutput`. While the task still runs (cancellable, like the analysis) the
worker checks them and embeds the searchable texts with the installed `Embedder` (`prepare`); then, outside the
cancellable part, it stores them (`store`) and only then the result document, which names the files.

Everything is keyed by (media, analyzer, key): a vector's id is a hash of the three (`vector_id`), a file lives at
``cases/{case}/media/{media}/results/{analyzer}/{name}``. Storing replaces what the previous run of the analyzer on
the media left: rows are upserted and files overwritten, then the rows and files that this run did not make are
removed, so a task run twice leaves one of each and a re-run with fewer faces leaves no stale ones. An analyzer that
returns only its model has nothing beside it and touches nothing stored beside results.

`discard` removes what one task stored (its job was cancelled, or its media deleted, while it ran). A backend that
fails raises `BackendUnavailable` (the task is tried again later); output that cannot be stored as given (a vector
of the wrong dimension, a file name with ``..``) raises `InvalidOutput` before anything is stored, and fails the task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bson
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel
from pymilvus.exceptions import MilvusException

from aima.analysis import AnalysisOutput, Embedder, Embedding, OutputFile, SearchableText
from aima.db.documents import ResultFile
from aima.db.vectors import COLLECTIONS, TEXT_COLLECTION, TEXT_VECTORS, collection_named
from aima.errors import AimaError, BackendUnavailable
from aima.resources import Resources
from aima.services.identities import cluster_media

logger = logging.getLogger(__name__)

#: Row fields the worker sets; an analyzer's `fields` may not use them.
SYSTEM_FIELDS = frozenset(
    {"id", "case_id", "media_id", "task_id", "vector", "analyzer", "analyzer_version", "key", "run_id"}
)
#: ... and those a text row carries besides.
TEXT_FIELDS = frozenset({"text", "start_s", "end_s"})
#: Longest text kept (and embedded) per `SearchableText`; embedding models read far less.
MAX_TEXT_CHARS = 4000
#: Largest JSON of one row's extra fields (Milvus keeps dynamic fields in one JSON value of at most 64 KiB).
MAX_FIELDS_BYTES = 32 * 1024
#: Largest result payload stored (a MongoDB document holds at most 16 MiB).
MAX_PAYLOAD_BYTES = 15 * 1024 * 1024
#: Largest file stored beside a result.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Texts embedded in one call of the embedder.
EMBED_BATCH = 64
#: Rows written to Milvus in one request.
UPSERT_BATCH = 500
#: Row ids read per query while removing rows (Milvus answers at most 16384).
QUERY_PAGE = 10_000
#: Files sent to (or deleted from) S3 at once.
TRANSFER_CONCURRENCY = 8
#: Seconds one Milvus request may take.
MILVUS_TIMEOUT_S = 30.0
_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,3}")
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(?:;[ \w.+=\"-]*)?")
T = TypeVar("T")


class InvalidOutput(AimaError):
    """An analyzer (or the embedder) made output that cannot be stored as it is: a bug of its plugin."""

    code = "INVALID_ANALYZER_OUTPUT"


@dataclass(frozen=True)
class VectorRow:
    """One vector to store, checked: its collection exists, its dimension fits, its fields are plain JSON."""

    collection: str
    key: str
    vector: list[float]
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outputs:
    """An analysis's result and what goes beside it, checked and ready to store (texts already embedded)."""

    payload: dict[str, Any]
    rows: list[VectorRow] = field(default_factory=list)
    files: list[OutputFile] = field(default_factory=list)
    #: Whether the analyzer returned an `AnalysisOutput`: only then does storing replace what earlier runs left.
    replaces: bool = False
    #: Searchable texts not stored because no embedder is installed.
    unembedded: int = 0


@dataclass(frozen=True)
class Origin:
    """The task run whose outputs these are."""

    case_id: uuid.UUID
    media_id: uuid.UUID
    analyzer: str
    analyzer_version: str
    task_id: uuid.UUID

    @property
    def prefix(self) -> str:
        return results_prefix(self.case_id, self.media_id, self.analyzer)

    def file_key(self, name: str) -> str:
        return self.prefix + name


@dataclass
class Stored:
    """What `store` wrote and removed."""

    files: list[ResultFile] = field(default_factory=list)
    #: Rows written, by collection.
    written: dict[str, int] = field(default_factory=dict)
    #: Rows of earlier runs removed, by collection.
    removed: dict[str, int] = field(default_factory=dict)
    removed_files: int = 0

    def touched(self, collection: str) -> bool:
        """Whether this run changed the collection's rows of the media (wrote or removed some)."""
        return bool(self.written.get(collection) or self.removed.get(collection))


def vector_id(media_id: uuid.UUID | str, analyzer: str, key: str) -> str:
    """The primary key of a row: stable for (media, analyzer, key), 64 characters."""
    return hashlib.sha256(f"{media_id}\x00{analyzer}\x00{key}".encode()).hexdigest()


def results_prefix(case_id: uuid.UUID, media_id: uuid.UUID, analyzer: str) -> str:
    """Where the files of one analyzer's result on one media item live (built from ids and the analyzer's name)."""
    return f"cases/{case_id}/media/{media_id}/results/{analyzer}/"


# --- checking and embedding (in the task's cancellable part) ----------------------------------------------------


async def prepare(result: BaseModel | AnalysisOutput, *, analyzer: str, embedder: Embedder | None) -> Outputs:
    """Check what an analyzer returned and embed its texts (in a thread, `EMBED_BATCH` at a time).

    Raises `InvalidOutput` for anything that could not be stored, so that nothing is stored at all.
    """
    if isinstance(result, AnalysisOutput) and isinstance(result.result, BaseModel):
        payload = _payload(result.result, analyzer)
    elif isinstance(result, BaseModel):
        return Outputs(payload=_payload(result, analyzer))
    else:
        raise TypeError(f"analyzer {analyzer} returned {type(result).__name__}, not a pydantic model or AnalysisOutput")
    source = f"Analyzer {analyzer}"
    rows = [_embedding_row(embedding, source) for embedding in result.embeddings]
    taken: set[tuple[str, str]] = set()
    for row in rows:
        if (row.collection, row.key) in taken:
            raise InvalidOutput(f"{source} made two embeddings with the key {row.key!r} for {row.collection}.")
        taken.add((row.collection, row.key))
    texts = _checked_texts(result.texts, source, taken)
    files = _checked_files(result.files, source)
    if texts and embedder is None:
        logger.debug("%s: %d texts not stored, no embedder is installed", analyzer, len(texts))
        return Outputs(payload=payload, rows=rows, files=files, replaces=True, unembedded=len(texts))
    if texts and embedder is not None:
        rows += await _embed(embedder, texts)
    return Outputs(payload=payload, rows=rows, files=files, replaces=True)


def _payload(model: BaseModel, analyzer: str) -> dict[str, Any]:
    payload: dict[str, Any] = model.model_dump(mode="json")
    size = len(bson.encode({"payload": payload}))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidOutput(
            f"The result of {analyzer} is {size / 2**20:.1f} MiB; results are stored up to "
            f"{MAX_PAYLOAD_BYTES / 2**20:.0f} MiB (large data belongs in files beside the result).",
            code="RESULT_TOO_LARGE",
        )
    return payload


def _embedding_row(embedding: Embedding, source: str) -> VectorRow:
    spec = collection_named(embedding.collection)
    if spec is None:
        names = ", ".join(c.name for c in COLLECTIONS)
        raise InvalidOutput(f"{source} made an embedding for {embedding.collection!r}, which is none of {names}.")
    key = _checked_key(embedding.key, source, "an embedding")
    what = f"embedding {key!r}"
    vector = _checked_vector(embedding.vector, spec.name, spec.dimension, source, what)
    return VectorRow(spec.name, key, vector, _checked_fields(embedding.fields, SYSTEM_FIELDS, source, what))


def _checked_key(key: object, source: str, what: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidOutput(f"{source} gave {what} the key {key!r}; keys are 1 to 200 printable characters.")
    return key


def _checked_vector(values: object, collection: str, dimension: int, source: str, what: str) -> list[float]:
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidOutput(f"{source} made {what} for {collection} that is not a list of numbers.") from exc
    if array.ndim != 1 or array.shape[0] != dimension:
        shape = f"{array.shape[0]}-dimensional" if array.ndim == 1 else f"shape {array.shape}"
        raise InvalidOutput(
            f"{source} made a {shape} vector ({what}) for {collection}, which holds {dimension}-dimensional vectors."
        )
    if not np.all(np.isfinite(array)):
        raise InvalidOutput(f"{source} made a vector ({what}) for {collection} with values that are not finite.")
    if not np.any(array):
        raise InvalidOutput(f"{source} made a zero vector ({what}) for {collection}; it has no direction to compare.")
    vector: list[float] = array.tolist()
    return vector


def _checked_fields(fields: Mapping[str, Any], reserved: frozenset[str], source: str, what: str) -> dict[str, Any]:
    """The fields as plain JSON values (what Milvus stores beside the vector)."""
    if not isinstance(fields, Mapping) or not all(isinstance(name, str) for name in fields):
        raise InvalidOutput(f"{source} gave {what} fields that are not a mapping of names to values.")
    clash = sorted(reserved.intersection(fields))
    if clash:
        raise InvalidOutput(f"{source} gave {what} the fields {', '.join(clash)}, which the worker sets itself.")
    try:
        text = json.dumps(dict(fields), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidOutput(f"{source} gave {what} fields that are not plain JSON values ({exc}).") from exc
    if len(text.encode()) > MAX_FIELDS_BYTES:
        raise InvalidOutput(f"{source} gave {what} fields of more than {MAX_FIELDS_BYTES} bytes as JSON.")
    checked: dict[str, Any] = json.loads(text)
    return checked


@dataclass(frozen=True)
class _Text:
    key: str
    text: str
    fields: dict[str, Any]


def _checked_texts(texts: Sequence[SearchableText], source: str, taken: set[tuple[str, str]]) -> list[_Text]:
    """The texts to embed (blank ones left out), their text cut to `MAX_TEXT_CHARS`, with their row fields."""
    checked: list[_Text] = []
    for item in texts:
        key = _checked_key(item.key, source, "a text")
        if (TEXT_COLLECTION, key) in taken:
            raise InvalidOutput(f"{source} used the key {key!r} twice for {TEXT_COLLECTION} (texts and embeddings).")
        taken.add((TEXT_COLLECTION, key))
        if not isinstance(item.text, str):
            raise InvalidOutput(f"{source} gave text {key!r} a {type(item.text).__name__}, not a string.")
        times = {"start_s": item.start_s, "end_s": item.end_s}
        for name, value in times.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidOutput(f"{source} gave text {key!r} a {name} that is not a number.")
            if value is not None and not math.isfinite(value):
                raise InvalidOutput(f"{source} gave text {key!r} a {name} that is not finite.")
        text = item.text.strip()
        if not text:
            continue
        fields = _checked_fields(item.fields, SYSTEM_FIELDS | TEXT_FIELDS, source, f"text {key!r}")
        fields.update(text=text[:MAX_TEXT_CHARS], **{k: None if v is None else float(v) for k, v in times.items()})
        checked.append(_Text(key, text[:MAX_TEXT_CHARS], fields))
    return checked


def _checked_files(files: Sequence[OutputFile], source: str) -> list[OutputFile]:
    names: set[str] = set()
    for file in files:
        if not isinstance(file.name, str) or not _FILE_NAME.fullmatch(file.name):
            raise InvalidOutput(
                f"{source} named a file {file.name!r}; names are letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, in up to 4 '/'-separated parts."
            )
        if file.name in names:
            raise InvalidOutput(f"{source} made two files named {file.name!r}.")
        names.add(file.name)
        if not isinstance(file.data, bytes) or not file.data:
            raise InvalidOutput(f"{source} made the file {file.name!r} without data (bytes).")
        if len(file.data) > MAX_FILE_BYTES:
            raise InvalidOutput(f"{source} made the file {file.name!r} larger than {MAX_FILE_BYTES} bytes.")
        if not isinstance(file.content_type, str) or not _CONTENT_TYPE.fullmatch(file.content_type):
            raise InvalidOutput(f"{source} gave the file {file.name!r} the content type {file.content_type!r}.")
    return list(files)


async def _embed(embedder: Embedder, texts: list[_Text]) -> list[VectorRow]:
    source = f"Embedder {embedder.name}"
    rows: list[VectorRow] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start : start + EMBED_BATCH]
        vectors = await asyncio.to_thread(embedder.embed, [t.text for t in batch])
        if len(vectors) != len(batch):
            raise InvalidOutput(f"{source} returned {len(vectors)} vectors for {len(batch)} texts.")
        for text, vector in zip(batch, vectors, strict=True):
            checked = _checked_vector(vector, TEXT_COLLECTION, TEXT_VECTORS.dimension, source, f"text {text.key!r}")
            rows.append(VectorRow(TEXT_COLLECTION, text.key, checked, text.fields))
    return rows


# --- storing (outside the cancellable part) ----------------------------------------------------------------------


async def store(resources: Resources, origin: Origin, outputs: Outputs) -> Stored:
    """Store the files and rows of one run, then remove those an earlier run of the analyzer on the media left
    and this one did not make. Idempotent: running it again for the same outputs changes nothing."""
    stored = Stored()
    if not outputs.replaces:
        return stored
    run_id = uuid.uuid4().hex
    # Listed before the new files are written: in a versioned bucket every version found here is an old one.
    earlier = await _s3(resources.store.listing(origin.prefix), "list result files")
    stored.files = await _put_files(resources, origin, outputs.files)
    stored.written = await _upsert_rows(resources, origin, outputs.rows, run_id)
    for spec in COLLECTIONS:
        stale = f"media_id == {_literal(origin.media_id)} and analyzer == {_literal(origin.analyzer)}"
        removed = await _delete_rows(resources, spec.name, f"{stale} and run_id != {_literal(run_id)}")
        if removed:
            stored.removed[spec.name] = removed
    kept = {file.key for file in stored.files}
    old = [item for item in earlier if item.version_id is not None or item.key not in kept]
    await _s3(resources.store.delete_versions(old), "remove old result files")
    stored.removed_files = len({item.key for item in old if item.key not in kept})
    logger.info(
        "%s of media %s: stored %d files and %d rows; removed %d old files and %d old rows",
        origin.analyzer,
        origin.media_id,
        len(stored.files),
        sum(stored.written.values()),
        stored.removed_files,
        sum(stored.removed.values()),
    )
    return stored


async def discard(resources: Resources, origin: Origin, names: Iterable[str]) -> Stored:
    """Remove the rows the task stored (in every collection) and its files of these names; returns what went. The
    files are deleted in every version: whatever else stood under these names went with the result document the
    task replaced."""
    gone = Stored()
    for spec in COLLECTIONS:
        mine = f"media_id == {_literal(origin.media_id)} and task_id == {_literal(origin.task_id)}"
        if removed := await _delete_rows(resources, spec.name, mine):
            gone.removed[spec.name] = removed
    limit = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def delete(key: str) -> None:
        async with limit:
            await _s3(resources.store.delete(key), "remove result files")

    keys = sorted({origin.file_key(name) for name in names})
    await asyncio.gather(*(delete(key) for key in keys))
    gone.removed_files = len(keys)
    return gone


async def _put_files(resources: Resources, origin: Origin, files: Sequence[OutputFile]) -> list[ResultFile]:
    limit = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def put(file: OutputFile) -> ResultFile:
        async with limit:
            key = origin.file_key(file.name)
            written = await _s3(
                resources.store.put_stream(
                    key,
                    _one_chunk(file.data),
                    content_type=file.content_type,
                    max_bytes=MAX_FILE_BYTES,
                    metadata={"task-id": str(origin.task_id), "analyzer-version": origin.analyzer_version},
                ),
                "store result files",
            )
            return ResultFile(
                name=file.name,
                key=key,
                content_type=file.content_type,
                size_bytes=written.size_bytes,
                sha256=written.sha256,
            )

    return list(await asyncio.gather(*(put(file) for file in files)))


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _upsert_rows(resources: Resources, origin: Origin, rows: Sequence[VectorRow], run_id: str) -> dict[str, int]:
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_collection.setdefault(row.collection, []).append(
            {
                **row.fields,
                "id": vector_id(origin.media_id, origin.analyzer, row.key),
                "case_id": str(origin.case_id),
                "media_id": str(origin.media_id),
                "task_id": str(origin.task_id),
                "vector": row.vector,
                "analyzer": origin.analyzer,
                "analyzer_version": origin.analyzer_version,
                "key": row.key,
                "run_id": run_id,
            }
        )
    for collection, data in by_collection.items():
        for start in range(0, len(data), UPSERT_BATCH):
            batch = data[start : start + UPSERT_BATCH]
            await _milvus(resources.milvus.upsert(collection, data=batch, timeout=MILVUS_TIMEOUT_S), "store vectors")
    return {collection: len(data) for collection, data in by_collection.items()}


async def _delete_rows(resources: Resources, collection: str, condition: str) -> int:
    """Delete the rows matching `condition`, found with strong consistency (a row just upserted is seen as it is
    now, not as it was), `QUERY_PAGE` at a time; returns how many."""
    removed = 0
    while True:
        found: list[dict[str, Any]] = await _milvus(
            resources.milvus.query(
                collection,
                filter=condition,
                output_fields=["id"],
                limit=QUERY_PAGE,
                consistency_level="Strong",
                timeout=MILVUS_TIMEOUT_S,
            ),
            "find old vectors",
        )
        if not found:
            return removed
        ids = [row["id"] for row in found]
        await _milvus(resources.milvus.delete(collection, ids=ids, timeout=MILVUS_TIMEOUT_S), "remove old vectors")
        removed += len(ids)
        if len(found) < QUERY_PAGE:
            return removed


def _literal(value: object) -> str:
    """A string literal for a Milvus filter (values here are ids and analyzer names, quoted as JSON quotes)."""
    return json.dumps(str(value))


async def _milvus(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except (MilvusException, OSError) as exc:
        logger.warning("milvus could not %s: %s", what, exc)
        raise BackendUnavailable(f"The vector store is unavailable (could not {what}).") from exc


async def _s3(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except (ClientError, BotoCoreError, OSError, RuntimeError) as exc:  # RuntimeError: S3 kept objects it was to delete
        logger.warning("the object store could not %s: %s", what, exc)
        raise BackendUnavailable(f"The object store is unavailable (could not {what}).") from exc


# --- identities ----------------------------------------------------------------------------------------------------

#: The collections whose rows the identities service groups into persons, and what it calls their kind.
CLUSTERED: dict[str, str] = {"face_embeddings": "face", "voice_embeddings": "voice"}


async def cluster(resources: Resources, origin: Origin, stored: Stored) -> None:
    """Let the identities service place the faces and voices this run changed among the case's persons. A failure
    is logged, never raised: the analysis stands, and the identities service reconciles later."""
    for collection, kind in CLUSTERED.items():
        if not stored.touched(collection):
            continue
        try:
            await cluster_media(
                resources, case_id=origin.case_id, media_id=origin.media_id, analyzer=origin.analyzer, kind=kind
            )
        except Exception:
            logger.exception(
                "clustering the %s embeddings of media %s (%s) failed; the identities reconcile them later",
                kind,
                origin.media_id,
                origin.analyzer,
            )
