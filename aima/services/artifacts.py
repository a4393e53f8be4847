"""Derived files of a media item: made once per (media, kind), stored in S3 next to the original, shared by analyzers.

A *preparation* makes one kind of artifact (`aima.media.derive` does the decoding): ``thumbnail`` (images) and
``poster`` (videos) for the UI, ``keyframes`` (videos and images) and ``audio_track`` (videos with sound, audio)
for analyzers that declare the matching `Need`. Preparations run as tasks named ``prepare:<name>`` (see
`aima.services.jobs`); `ensure_artifacts` is what such a task does, and it is idempotent: rows already stored for
the media, made by the same deriver version, are reused; otherwise the original is derived, each file is stored
under ``cases/{case_id}/media/{media_id}/derived/{kind}/{seq}`` (built from ids only) and the rows are inserted
in one transaction, so a set of rows is always complete. Two workers preparing the same thing take turns on a
PostgreSQL advisory lock (released by the server if a worker dies); the second one finds the first one's rows.

A media item deleted while its files were being made takes them with it: the rows cascade, and the objects this
module stored are deleted again when the media row is found gone after the insert (the deletion's own sweep of the
media's S3 prefix, which runs after its rows are gone, covers the rest).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import io
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from PIL import Image
from sqlalchemy import BigInteger, Table, bindparam, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aima.analysis import Keyframe, MediaKind, Need
from aima.db.models import Artifact, Media
from aima.errors import AimaError
from aima.media import derive
from aima.media.sniff import SniffedType
from aima.resources import Resources
from aima.storage import ObjectStore, StoredObject

logger = logging.getLogger(__name__)

#: Task names of preparations start with this; no analyzer may be requested by such a name.
PREPARE_PREFIX = "prepare:"
#: Largest derived file stored (an audio track of 16 kHz mono PCM grows by 115 MB an hour).
MAX_ARTIFACT_BYTES = 4 * 1024**3
#: Files stored or fetched at once for one media item.
TRANSFER_CONCURRENCY = 8

_artifacts = cast(Table, Artifact.__table__)
_media = cast(Table, Media.__table__)


class ArtifactKind(enum.StrEnum):
    THUMBNAIL = "thumbnail"
    POSTER = "poster"
    KEYFRAME = "keyframe"
    AUDIO_TRACK = "audio_track"


@dataclass(frozen=True)
class Preparation:
    """One kind of derived file and the deriver that makes it; its version is the preparation task's version."""

    name: str
    kind: ArtifactKind
    version: str
    media_kinds: frozenset[MediaKind]
    description: str

    @property
    def task_name(self) -> str:
        return PREPARE_PREFIX + self.name

    def applies_to(self, kind: MediaKind, *, has_audio: bool | None = None) -> bool:
        """Whether media of this kind get it; a video gets an audio track unless its probe found no sound."""
        if kind not in self.media_kinds:
            return False
        return not (self is AUDIO_TRACK and kind is MediaKind.VIDEO and has_audio is False)


THUMBNAIL = Preparation(
    "thumbnail", ArtifactKind.THUMBNAIL, "1.0.0", frozenset({MediaKind.IMAGE}), "JPEG preview, longest side 512"
)
POSTER = Preparation(
    "poster", ArtifactKind.POSTER, "1.0.0", frozenset({MediaKind.VIDEO}), "JPEG of a representative keyframe"
)
KEYFRAMES = Preparation(
    "keyframes",
    ArtifactKind.KEYFRAME,
    "1.0.0",
    frozenset({MediaKind.VIDEO, MediaKind.IMAGE}),
    "JPEG frames at scene changes and at least every 10 s, from codec keyframes; a still image is its own",
)
AUDIO_TRACK = Preparation(
    "audio_track",
    ArtifactKind.AUDIO_TRACK,
    "1.0.0",
    frozenset({MediaKind.VIDEO, MediaKind.AUDIO}),
    "the first audio stream as 16 kHz mono 16-bit PCM WAV",
)
PREPARATIONS: dict[str, Preparation] = {p.task_name: p for p in (THUMBNAIL, POSTER, KEYFRAMES, AUDIO_TRACK)}
#: What an analyzer's need is prepared by (`Need.ORIGINAL` needs nothing: the worker fetches the original).
FOR_NEED: dict[Need, Preparation] = {Need.KEYFRAMES: KEYFRAMES, Need.AUDIO_TRACK: AUDIO_TRACK}
#: The preview the UI shows, made for every media item of these kinds by each job on it.
PREVIEW: dict[MediaKind, Preparation] = {MediaKind.IMAGE: THUMBNAIL, MediaKind.VIDEO: POSTER}


def preparation_of_task(analyzer: str) -> Preparation | None:
    """The preparation a task runs, from the task's analyzer name; None for an analysis task."""
    return PREPARATIONS.get(analyzer) if analyzer.startswith(PREPARE_PREFIX) else None


def preparations_for(kind: MediaKind, needs: Iterable[Need], *, has_audio: bool | None = None) -> list[Preparation]:
    """The preparations that analyzers with these needs wait for, on media of this kind."""
    found = {FOR_NEED[n].name: FOR_NEED[n] for n in needs if n in FOR_NEED}
    return [p for p in found.values() if p.applies_to(kind, has_audio=has_audio)]


def derived_key(case_id: uuid.UUID, media_id: uuid.UUID, kind: ArtifactKind, seq: int) -> str:
    """Where a derived file lives: next to the original, built from ids only."""
    return f"cases/{case_id}/media/{media_id}/derived/{kind}/{seq}"


@dataclass(frozen=True)
class SourceMedia:
    """The facts of a media item a preparation needs."""

    id: uuid.UUID
    case_id: uuid.UUID
    kind: MediaKind
    format: str
    content_type: str
    storage_key: str

    @property
    def sniffed(self) -> SniffedType:
        return SniffedType(kind=self.kind, content_type=self.content_type, format=self.format)


class MediaGone(AimaError):
    """The media item was deleted while its files were being made; what was stored for it is gone again."""

    code = "MEDIA_DELETED"

    def __init__(self, media_id: uuid.UUID) -> None:
        super().__init__(f"Media {media_id} was deleted while it was being prepared.")


@dataclass(frozen=True)
class Prepared:
    artifacts: list[Artifact]
    #: False when the stored artifacts were reused.
    derived: bool


@dataclass(frozen=True)
class _Output:
    """One derived file on local disk, before it is stored."""

    seq: int
    path: Path
    content_type: str
    details: dict[str, Any] = field(default_factory=dict)


# --- making them -----------------------------------------------------------------------------------


async def ensure_artifacts(
    resources: Resources,
    media: SourceMedia,
    preparation: Preparation,
    *,
    workdir: Path,
    original: Path | None = None,
    progress: derive.Progress | None = None,
) -> Prepared:
    """The artifacts of `preparation` for `media`: the stored ones when current, else made, stored and recorded.

    `workdir` is an existing private directory the caller removes; the original is fetched into it unless `original`
    is a local copy already. Raises `MediaGone` when the media was deleted meanwhile (nothing is left behind), the
    deriver's `CorruptMedia` and the like when the original does not decode. An audio track of a file without sound
    gives no artifact (and is looked for again next time).
    """
    rows = await artifacts_of(resources, media.id, preparation.kind)
    if rows and _current(rows, preparation):
        return Prepared(rows, derived=False)
    while True:
        async with resources.engine.connect() as conn, conn.begin():
            await conn.execute(_LOCK, {"p_key": _lock_key(media.id, preparation.kind)})
            rows = await _rows(conn, media.id, preparation.kind)
            if rows and _current(rows, preparation):
                return Prepared(rows, derived=False)
            if not rows:
                made = await _make(
                    resources, conn, media, preparation, workdir=workdir, original=original, progress=progress
                )
                break
            # Made by another version of the deriver: forget them, then make them afresh (under the lock again).
            await conn.execute(delete(_artifacts).where(_artifacts.c.id.in_([r.id for r in rows])))
        logger.info("replacing %d %s artifacts of media %s (older deriver)", len(rows), preparation.kind, media.id)
        await delete_objects(resources.store, [r.storage_key for r in rows])
    if not await _media_present(resources, media.id):
        await delete_objects(resources.store, [a.storage_key for a in made])
        raise MediaGone(media.id)
    return Prepared(made, derived=True)


async def _media_present(resources: Resources, media_id: uuid.UUID) -> bool:
    async with resources.engine.connect() as conn:
        present: bool = (await conn.execute(select(exists().where(_media.c.id == media_id)))).scalar_one()
    return present


async def _make(
    resources: Resources,
    conn: AsyncConnection,
    media: SourceMedia,
    preparation: Preparation,
    *,
    workdir: Path,
    original: Path | None,
    progress: derive.Progress | None = None,
) -> list[Artifact]:
    """Derive, store every file, insert the rows (in the caller's transaction); on failure nothing stays stored."""
    if original is None:
        original = workdir / "original"
        await resources.store.download_to(media.storage_key, original)
    out = workdir / f"derived-{preparation.name}"
    outputs = await asyncio.to_thread(_derive, preparation, original, media.sniffed, out, progress or _ignore)
    stored: list[StoredObject] = []
    try:
        stored = await _store_all(resources.store, media, preparation.kind, outputs)
        rows = [
            Artifact(
                id=uuid.uuid4(),
                media_id=media.id,
                kind=str(preparation.kind),
                seq=output.seq,
                storage_key=obj.key,
                content_type=output.content_type,
                size_bytes=obj.size_bytes,
                sha256=obj.sha256,
                details={**output.details, "version": preparation.version},
            )
            for output, obj in zip(outputs, stored, strict=True)
        ]
        if rows:
            statement = insert(_artifacts).returning(*_artifacts.c, sort_by_parameter_order=True)
            try:
                result = await conn.execute(statement, [_columns(row) for row in rows])
            except IntegrityError as exc:  # the media row is gone (its foreign key)
                raise MediaGone(media.id) from exc
            rows = [Artifact(**row._mapping) for row in result]
    except BaseException:
        await asyncio.shield(delete_objects(resources.store, [obj.key for obj in stored]))
        raise
    finally:
        await asyncio.to_thread(_remove_tree, out)
    logger.info("made %d %s artifacts of media %s", len(rows), preparation.kind, media.id)
    return rows


def _ignore(fraction: float) -> None:
    return None


def _derive(
    preparation: Preparation, original: Path, sniffed: SniffedType, out: Path, progress: derive.Progress
) -> list[_Output]:
    """Run the deriver (in a worker thread), writing each file under `out`."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    derivers = {
        THUMBNAIL.name: _thumbnail,
        POSTER.name: _poster,
        KEYFRAMES.name: _keyframes,
        AUDIO_TRACK.name: _audio_track,
    }
    return derivers[preparation.name](original, sniffed, out, progress)


def _thumbnail(original: Path, sniffed: SniffedType, out: Path, progress: derive.Progress) -> list[_Output]:
    data = derive.thumbnail(original, sniffed)
    width, height = Image.open(io.BytesIO(data)).size
    return [_write(out / "thumbnail.jpg", data, 0, {"width": width, "height": height})]


def _poster(original: Path, sniffed: SniffedType, out: Path, progress: derive.Progress) -> list[_Output]:
    poster = derive.poster_frame(original, sniffed)
    details = {"timestamp_s": poster.timestamp_s, "width": poster.width, "height": poster.height}
    return [_write(out / "poster.jpg", poster.jpeg, 0, details)]


def _keyframes(original: Path, sniffed: SniffedType, out: Path, progress: derive.Progress) -> list[_Output]:
    stats = derive.KeyframeStats()
    outputs = []
    for seq, frame in enumerate(derive.keyframes(original, sniffed, stats=stats, progress=progress)):
        details = {
            "timestamp_s": frame.timestamp_s,
            "scene_change": frame.scene_change,
            "score": frame.score,
            "codec_keyframe": frame.codec_keyframe,
            "width": frame.width,
            "height": frame.height,
        }
        outputs.append(_write(out / f"{seq:05d}.jpg", frame.jpeg, seq, details))
    logger.info(
        "keyframes: %d kept of %d frames decoded (%d codec keyframes, %d long groups decoded in full)",
        stats.kept,
        stats.frames_decoded,
        stats.keyframes_decoded,
        stats.dense_groups,
    )
    return outputs


def _audio_track(original: Path, sniffed: SniffedType, out: Path, progress: derive.Progress) -> list[_Output]:
    path = out / "audio.wav"
    try:
        info = derive.audio_track(original, sniffed, path, progress=progress)
    except derive.NoAudioTrack:
        return []
    return [_Output(0, path, "audio/wav", asdict(info))]


def _write(path: Path, data: bytes, seq: int, details: Mapping[str, object]) -> _Output:
    path.write_bytes(data)
    return _Output(seq, path, "image/jpeg", dict(details))


async def _store_all(
    store: ObjectStore, media: SourceMedia, kind: ArtifactKind, outputs: Sequence[_Output]
) -> list[StoredObject]:
    """Store every file (a few at a time); when one fails, the ones stored are deleted again."""
    limit = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def one(output: _Output) -> StoredObject:
        async with limit:
            key = derived_key(media.case_id, media.id, kind, output.seq)
            return await store.put_stream(
                key,
                _file_chunks(output.path, store.part_size),
                content_type=output.content_type,
                max_bytes=MAX_ARTIFACT_BYTES,
            )

    results = await asyncio.gather(*(one(o) for o in outputs), return_exceptions=True)
    stored = [r for r in results if isinstance(r, StoredObject)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        await asyncio.shield(delete_objects(store, [obj.key for obj in stored]))
        raise failure
    return stored


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def delete_objects(store: ObjectStore, keys: Sequence[str]) -> None:
    """Delete stored objects, a few at a time; failures are logged (the deletion's orphan sweep is the backstop)."""
    limit = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def one(key: str) -> None:
        async with limit:
            try:
                await store.delete(key)
            except Exception:
                logger.exception("could not delete derived object %s", key)

    await asyncio.gather(*(one(k) for k in keys))


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _current(rows: Sequence[Artifact], preparation: Preparation) -> bool:
    return all(row.details.get("version") == preparation.version for row in rows)


def _lock_key(media_id: uuid.UUID, kind: ArtifactKind) -> int:
    digest = hashlib.blake2b(f"aima-artifacts:{media_id}:{kind}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_LOCK = select(func.pg_advisory_xact_lock(bindparam("p_key", type_=BigInteger)))


def _columns(row: Artifact) -> dict[str, object]:
    return {c.key: value for c in _artifacts.columns if (value := getattr(row, c.key, None)) is not None}


# --- reading them ----------------------------------------------------------------------------------


def _select(media_id: uuid.UUID, kind: ArtifactKind | None) -> Any:
    query = select(_artifacts).where(_artifacts.c.media_id == media_id)
    if kind is not None:
        query = query.where(_artifacts.c.kind == str(kind))
    return query.order_by(_artifacts.c.kind, _artifacts.c.seq)


async def _rows(conn: AsyncConnection, media_id: uuid.UUID, kind: ArtifactKind | None) -> list[Artifact]:
    result = await conn.execute(_select(media_id, kind))
    return [Artifact(**row._mapping) for row in result]


async def artifacts_of(resources: Resources, media_id: uuid.UUID, kind: ArtifactKind | None = None) -> list[Artifact]:
    """The stored artifacts of a media item (of one kind, or all), ordered by kind and number."""
    async with resources.engine.connect() as conn:
        return await _rows(conn, media_id, kind)


async def download_keyframes(resources: Resources, artifacts: Sequence[Artifact], dest: Path) -> list[Keyframe]:
    """Fetch keyframe artifacts into `dest` (created), in time order."""
    await asyncio.to_thread(dest.mkdir, mode=0o700, parents=True, exist_ok=True)
    frames = sorted((a for a in artifacts if a.kind == ArtifactKind.KEYFRAME), key=lambda a: a.seq)
    paths = [dest / f"{a.seq:05d}.jpg" for a in frames]
    await _download_all(resources.store, [(a.storage_key, p) for a, p in zip(frames, paths, strict=True)])
    return [
        Keyframe(
            path=path,
            timestamp_s=float(cast(float, a.details.get("timestamp_s", 0.0))),
            scene_change=bool(a.details.get("scene_change", False)),
            width=int(cast(int, a.details.get("width", 0))),
            height=int(cast(int, a.details.get("height", 0))),
        )
        for a, path in zip(frames, paths, strict=True)
    ]


async def download_artifact(resources: Resources, artifact: Artifact, path: Path) -> Path:
    await _download_all(resources.store, [(artifact.storage_key, path)])
    return path


async def _download_all(store: ObjectStore, pairs: Sequence[tuple[str, Path]]) -> None:
    limit = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def one(key: str, path: Path) -> None:
        async with limit:
            try:
                await store.download_to(key, path)
            except AimaError as exc:
                if exc.code == "ORIGINAL_MISSING":  # the store's word for any missing object
                    raise AimaError(
                        "A stored derived file of this media is missing; analyse it again to remake it.",
                        code="ARTIFACT_MISSING",
                    ) from exc
                raise

    await asyncio.gather(*(one(k, p) for k, p in pairs))


async def forget(resources: Resources, media_id: uuid.UUID, kind: ArtifactKind) -> int:
    """Delete the artifacts of one kind of a media item (rows, then objects); they are made again when needed."""
    async with resources.engine.begin() as conn:
        await conn.execute(_LOCK, {"p_key": _lock_key(media_id, kind)})
        rows = await _rows(conn, media_id, kind)
        await conn.execute(delete(_artifacts).where(_artifacts.c.id.in_([r.id for r in rows])))
    await delete_objects(resources.store, [r.storage_key for r in rows])
    return len(rows)
