"""A media item's results read together: the transcript with who said each segment, the faces with the person each
one is, and the text on screen.

The result documents are the analyzers' own (``whisper``, ``speakers``, ``faces``, ``ocr``); this module reads the
parts it joins, tolerating fields it does not know, and joins them with the clusters of `aima.services.identities`.
A segment's speaker is the diarization speaker whose turns overlap it the most; its voice is the cluster of the turn
that overlaps it the most. Face crops are handed out as short-lived presigned links, for files the result document
lists.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aima.db.models import IdentityCluster, IdentityKind, IdentityMember, Media
from aima.errors import AimaError
from aima.resources import Resources
from aima.services.access import Actor
from aima.services.identities import display_name
from aima.services.identity_views import identities_of_media
from aima.services.media import get_media
from aima.vision import VisualDescription

logger = logging.getLogger(__name__)

WHISPER = "whisper"
SPEAKERS = "speakers"
FACES = "faces"
OCR = "ocr"

M = TypeVar("M", bound=BaseModel)


class UnreadableResult(AimaError):
    """A stored result whose shape this server does not read (an analyzer version it does not know)."""

    code = "UNREADABLE_RESULT"


class _Word(BaseModel):
    start_s: float
    end_s: float
    word: str
    probability: float | None = None


class _Segment(BaseModel):
    id: int
    start_s: float
    end_s: float
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: list[_Word] = []


class _Transcript(BaseModel):
    language: str | None = None
    language_probability: float | None = None
    duration_s: float | None = None
    model: str | None = None
    segments: list[_Segment] = []


class _Turn(BaseModel):
    key: str
    start_s: float
    end_s: float
    speaker: str


class _Speakers(BaseModel):
    turns: list[_Turn] = []


class _Face(BaseModel):
    key: str
    keyframe: int = 0
    timestamp_s: float = 0.0
    box: list[float]
    landmarks: list[list[float]] | None = None
    det_score: float | None = None
    crop: str | None = None
    has_embedding: bool | None = None


class _Faces(BaseModel):
    faces: list[_Face] = []


class _OcrLine(BaseModel):
    key: str
    text: str
    box: list[list[float]]
    confidence: float | None = None


class _OcrFrame(BaseModel):
    index: int
    timestamp_s: float
    lines: list[_OcrLine] = []


class _OcrSpan(BaseModel):
    key: str
    text: str
    confidence: float | None = None
    variants: list[str] = []
    first_s: float
    last_s: float
    frames: int = 1


class _Ocr(BaseModel):
    frames: list[_OcrFrame] = []
    spans: list[_OcrSpan] = []


@dataclass(frozen=True)
class Stored:
    """The newest result document of one analyzer for a media item: its version and the parts read."""

    analyzer: str
    version: str
    payload: dict[str, Any]
    files: list[dict[str, Any]]


async def _latest(
    resources: Resources, media_id: uuid.UUID, analyzer: str | Sequence[str], fields: Sequence[str]
) -> Stored | None:
    """The newest result of `analyzer` (or of any of several) for the media item, with the payload's `fields`."""
    wanted: object = analyzer if isinstance(analyzer, str) else {"$in": list(analyzer)}
    projection = {"analyzer": 1, "analyzer_version": 1, "files": 1, **{f"payload.{name}": 1 for name in fields}}
    raw = await resources.results.find_one(
        {"media_id": str(media_id), "analyzer": wanted}, projection=projection, sort=[("updated_at", -1)]
    )
    if raw is None:
        return None
    files = [f for f in raw.get("files") or [] if isinstance(f, dict)]
    return Stored(str(raw["analyzer"]), str(raw.get("analyzer_version", "")), dict(raw.get("payload") or {}), files)


def _read(model: type[M], stored: Stored) -> M:
    try:
        return model.model_validate(stored.payload)
    except ValidationError as exc:
        logger.warning("unreadable %s result (version %s): %s", stored.analyzer, stored.version, exc)
        raise UnreadableResult(
            f"The {stored.analyzer} result (version {stored.version}) has a shape this server does not read."
        ) from None


# --- Transcript --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptLine:
    index: int
    start_s: float
    end_s: float
    text: str
    #: The diarization speaker of the media item ("S1"), None when no turn overlaps the segment.
    speaker: str | None
    #: The speaker's voice across the case, when clustered.
    voice: IdentityCluster | None
    avg_logprob: float | None
    no_speech_prob: float | None
    words: list[tuple[float, float, str, float | None]]

    def render(self) -> str:
        """``[00:01:02.5-00:01:05.0] S1 / Alice: text``: a line for a report."""
        who = self.speaker or "?"
        if self.voice is not None:
            who = f"{who} / {display_name(self.voice)}"
        return f"[{clock(self.start_s)}-{clock(self.end_s)}] {who}: {self.text.strip()}"


@dataclass(frozen=True)
class Transcript:
    analyzer_version: str
    language: str | None
    language_probability: float | None
    duration_s: float | None
    model: str | None
    #: Whether a speakers result was there to say who spoke.
    diarized: bool
    lines: list[TranscriptLine]


_TRANSCRIPT_FIELDS = ("language", "language_probability", "duration_s", "model", "segments")


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{seconds % 60:04.1f}"


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def speaker_of(segment_start: float, segment_end: float, turns: Sequence[_Turn]) -> tuple[str | None, str | None]:
    """The speaker whose turns overlap the segment the most, and the key of its turn that overlaps it the most."""
    totals: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    for turn in turns:
        shared = _overlap(segment_start, segment_end, turn.start_s, turn.end_s)
        if shared <= 0:
            continue
        totals[turn.speaker] = totals.get(turn.speaker, 0.0) + shared
        if shared > best.get(turn.speaker, (0.0, ""))[0]:
            best[turn.speaker] = (shared, turn.key)
    if not totals:
        return None, None
    speaker = max(sorted(totals), key=lambda s: totals[s])
    return speaker, best[speaker][1]


async def transcript(
    *,
    resources: Resources,
    actor: Actor,
    media_id: uuid.UUID,
    analyzer: str = WHISPER,
    speakers: str = SPEAKERS,
) -> Transcript | None:
    """The media item's newest transcript (by `analyzer`), each segment with its speaker (by `speakers`) and voice;
    None when it has none."""
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
        voices = await identities_of_media(session, media.id, IdentityKind.VOICE)
    stored = await _latest(resources, media.id, analyzer, _TRANSCRIPT_FIELDS)
    if stored is None:
        return None
    spoken = _read(_Transcript, stored)
    diarization = await _latest(resources, media.id, speakers, ["turns"])
    turns = _read(_Speakers, diarization).turns if diarization is not None else []
    lines = []
    for segment in spoken.segments:
        speaker, turn_key = speaker_of(segment.start_s, segment.end_s, turns)
        voice = voices.get((speakers, turn_key)) if turn_key else None
        lines.append(
            TranscriptLine(
                index=segment.id,
                start_s=segment.start_s,
                end_s=segment.end_s,
                text=segment.text,
                speaker=speaker,
                voice=voice[1] if voice else None,
                avg_logprob=segment.avg_logprob,
                no_speech_prob=segment.no_speech_prob,
                words=[(w.start_s, w.end_s, w.word, w.probability) for w in segment.words],
            )
        )
    return Transcript(
        analyzer_version=stored.version,
        language=spoken.language,
        language_probability=spoken.language_probability,
        duration_s=spoken.duration_s,
        model=spoken.model,
        diarized=diarization is not None,
        lines=lines,
    )


# --- Faces -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceView:
    key: str
    keyframe: int
    timestamp_s: float
    box: list[float]
    landmarks: list[list[float]] | None
    det_score: float | None
    crop_url: str | None
    member: IdentityMember | None
    person: IdentityCluster | None


def _crop_key(stored: Stored, media: Media, name: str | None) -> str | None:
    """The storage key of a crop the result lists; keys are checked to lie under the media's results folder."""
    if not name:
        return None
    prefix = f"cases/{media.case_id}/media/{media.id}/results/{stored.analyzer}/"
    for listed in stored.files:
        key = listed.get("key")
        if listed.get("name") == name and isinstance(key, str) and key.startswith(prefix) and ".." not in key:
            return key
    return None


async def jpeg_url(resources: Resources, key: str | None) -> str | None:
    """A short-lived presigned link to a stored JPEG (a face crop, a keyframe)."""
    if key is None:
        return None
    expires_s = resources.settings.uploads.presigned_url_seconds
    return await resources.store.presigned_get(key, expires_s=expires_s, content_type="image/jpeg")


async def faces(*, resources: Resources, actor: Actor, media_id: uuid.UUID, analyzer: str = FACES) -> list[FaceView]:
    """Every face the analyzer found in the media item, in time order, with its person and crop."""
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
        persons = await identities_of_media(session, media.id, IdentityKind.FACE)
    stored = await _latest(resources, media.id, analyzer, ["faces"])
    if stored is None:
        return []
    found = []
    for face in sorted(_read(_Faces, stored).faces, key=lambda f: (f.timestamp_s, f.keyframe, f.key)):
        clustered = persons.get((analyzer, face.key))
        found.append(
            FaceView(
                key=face.key,
                keyframe=face.keyframe,
                timestamp_s=face.timestamp_s,
                box=face.box,
                landmarks=face.landmarks,
                det_score=face.det_score,
                crop_url=await jpeg_url(resources, _crop_key(stored, media, face.crop)),
                member=clustered[0] if clustered else None,
                person=clustered[1] if clustered else None,
            )
        )
    return found


async def crop_links(resources: Resources, members: Iterable[tuple[IdentityMember, Media]]) -> dict[uuid.UUID, str]:
    """Presigned links to the crops of these face members (read access to their media checked by the caller)."""
    wanted = [(m, media) for m, media in members if m.kind is IdentityKind.FACE]
    if not wanted:
        return {}
    media_ids = sorted({str(media.id) for _, media in wanted})
    analyzers = sorted({m.analyzer for m, _ in wanted})
    newest: dict[tuple[str, str], Stored] = {}
    cursor = resources.results.find(
        {"media_id": {"$in": media_ids}, "analyzer": {"$in": analyzers}},
        projection={
            "media_id": 1,
            "analyzer": 1,
            "analyzer_version": 1,
            "files": 1,
            "payload.faces.key": 1,
            "payload.faces.crop": 1,
        },
    ).sort([("updated_at", 1)])
    async for raw in cursor:  # the newest of each media and analyzer comes last
        files = [f for f in raw.get("files") or [] if isinstance(f, dict)]
        newest[(str(raw["media_id"]), str(raw["analyzer"]))] = Stored(
            str(raw["analyzer"]), str(raw.get("analyzer_version", "")), dict(raw.get("payload") or {}), files
        )
    links = {}
    for member, media in wanted:
        stored = newest.get((str(media.id), member.analyzer))
        if stored is None:
            continue
        crops = {
            str(face.get("key")): face.get("crop")
            for face in stored.payload.get("faces") or []
            if isinstance(face, dict)
        }
        url = await jpeg_url(resources, _crop_key(stored, media, crops.get(member.key) or f"{member.key}.jpg"))
        if url is not None:
            links[member.id] = url
    return links


# --- Text on screen ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcrLineView:
    key: str
    keyframe: int
    timestamp_s: float
    text: str
    confidence: float | None
    #: The line's four corners in pixels of its keyframe.
    box: list[list[float]]


@dataclass(frozen=True)
class OcrSpanView:
    key: str
    text: str
    confidence: float | None
    variants: list[str]
    first_s: float
    last_s: float
    frames: int


@dataclass(frozen=True)
class OcrView:
    analyzer_version: str
    lines: list[OcrLineView]
    spans: list[OcrSpanView]


async def ocr(*, resources: Resources, actor: Actor, media_id: uuid.UUID, analyzer: str = OCR) -> OcrView | None:
    """The text read on the media item's keyframes, line by line and as spans of time; None when not read."""
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
    stored = await _latest(resources, media.id, analyzer, ["frames", "spans"])
    if stored is None:
        return None
    read = _read(_Ocr, stored)
    lines = [
        OcrLineView(line.key, frame.index, frame.timestamp_s, line.text, line.confidence, line.box)
        for frame in read.frames
        for line in frame.lines
    ]
    spans = [OcrSpanView(s.key, s.text, s.confidence, s.variants, s.first_s, s.last_s, s.frames) for s in read.spans]
    return OcrView(stored.version, lines, spans)


# --- Visual description ------------------------------------------------------------------------------------------


async def description(
    *, resources: Resources, actor: Actor, media_id: uuid.UUID
) -> tuple[str, str, VisualDescription] | None:
    """The newest stored result, for a media item, of any installed analyzer whose result is a
    `VisualDescription` (the vision plugin's), with its analyzer and version; None when there is none."""
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
    names = [a.name for a in resources.analyzers.all() if issubclass(a.result_model, VisualDescription)]
    if not names:
        return None
    stored = await _latest(resources, media.id, names, list(VisualDescription.model_fields))
    if stored is None:
        return None
    return stored.analyzer, stored.version, _read(VisualDescription, stored)
