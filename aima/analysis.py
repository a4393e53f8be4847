"""What a plugin implements: analyzers, and the inputs and results they exchange with the core.

An analyzer is a small object with a name, a version, the media kinds it accepts, what it needs and what it runs on.
The worker hands it an `AnalysisInput` and stores the pydantic model it returns, keyed by
(media, analyzer name, analyzer version).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from aima.inference import Endpoints

logger = logging.getLogger(__name__)


class MediaKind(enum.StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


class Need(enum.StrEnum):
    """Inputs an analyzer asks the worker to prepare before it runs (see `AnalysisInput`).

    Keyframes and the audio track are made once per media item by preparation tasks of the job, stored, and
    shared by every analyzer that needs them; an analyzer that does not need the original is spared its download.
    """

    ORIGINAL = "original"
    KEYFRAMES = "keyframes"
    AUDIO_TRACK = "audio_track"


#: Reports progress from 0 to 1 with a short message; safe to call from a worker thread.
ProgressCallback = Callable[[float, str], None]


def _ignore_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class Keyframe:
    """A frame chosen from a video (a still image is its own single keyframe), as a local JPEG file."""

    path: Path
    #: Seconds from the start of the media.
    timestamp_s: float
    #: Whether it was chosen because the picture changed (the first frame counts), not to fill a long shot.
    scene_change: bool
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class AnalysisInput:
    """One media item as an analyzer sees it: local copies of what it needs and the item's registered facts.

    Only what the analyzer declares in `Analyzer.needs` is fetched: `original_path` exists when it needs
    `Need.ORIGINAL`; `keyframes` are filled for `Need.KEYFRAMES` (videos and images; empty for audio);
    `audio_track_path` is a 16 kHz mono 16-bit PCM WAV for `Need.AUDIO_TRACK` (None when the media has no sound).
    Keyframe timestamps and audio-track time are both seconds from the start of the media.
    """

    media_id: str
    case_id: str
    kind: MediaKind
    content_type: str
    size_bytes: int
    sha256: str
    original_path: Path
    report_progress: ProgressCallback = field(default=_ignore_progress)
    keyframes: list[Keyframe] = field(default_factory=list)
    audio_track_path: Path | None = None
    #: The worker's model endpoints (`aima.inference`), for analyzers that run on one (`runs_on`); None elsewhere.
    inference: Endpoints | None = None


@dataclass(frozen=True)
class Embedding:
    """A vector an analyzer made (a face, a voice), stored by the worker in the named Milvus collection.

    `key` names it within the result (``"face-3"``, ``"segment-12"``); the row's id is derived from (media, analyzer,
    key), so a task run twice leaves one row. `fields` are kept beside the vector (timestamps, boxes: plain JSON).
    """

    collection: str
    key: str
    vector: Sequence[float]
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchableText:
    """Text an analyzer found (a transcript segment, a line of on-screen text) for the worker to embed with the
    installed `Embedder` and store in ``text_embeddings``, so that a case can be searched by meaning."""

    key: str
    text: str
    start_s: float | None = None
    end_s: float | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputFile:
    """A file an analyzer made (a face crop), stored by the worker in S3 at
    ``cases/{case}/media/{media}/results/{analyzer}/{name}``; a re-run overwrites it."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class AnalysisOutput:
    """A result with what goes beside it. An analyzer that has only a result may return the model itself."""

    result: BaseModel
    embeddings: Sequence[Embedding] = ()
    texts: Sequence[SearchableText] = ()
    files: Sequence[OutputFile] = ()
    #: Analyzers that should also look at this media item, in this job (e.g. faces, when a picture's description
    #: reports people): the worker adds a task for each that has neither a result nor a task for the media yet,
    #: and the job's case-level tasks wait for it too.
    follow_ups: Sequence[str] = ()


@dataclass(frozen=True)
class EvidenceItem:
    """One citable item of a stored result: a transcript segment, a speaker turn, a face, a line of on-screen text,
    a keyframe's description. `key` is unique within the result; a dossier cites (media, analyzer, key)."""

    media_id: str
    analyzer: str
    key: str
    #: "speech", "speaker", "face", "text", "scene", ... (free, short).
    kind: str
    #: What the item says, for the language model and the reader (a transcript line, "face of person 3", ...).
    summary: str
    start_s: float | None = None
    end_s: float | None = None
    keyframe: int | None = None
    box: Sequence[float] | None = None
    confidence: float | None = None


T = TypeVar("T")


def stored_items(
    adapter: TypeAdapter[list[T]], payload: Mapping[str, Any], field: str, *, media_id: str, what: str
) -> list[T] | None:
    """The list `field` of a stored result, read with `adapter`, for an analyzer's `evidence`; None (logged) when
    it has another shape (an older or foreign result): the result then offers no items and is cited whole."""
    try:
        return adapter.validate_python(payload.get(field))
    except ValidationError as exc:
        logger.warning("%s of media %s has %s of another shape, no evidence: %s", what, media_id, field, exc)
        return None


class ModelNotInstalled(Exception):
    """An analyzer's model is missing; the message says how to install it. Raised by `Analyzer.check` when a
    worker starts, so that a missing model stops the worker with that message instead of failing tasks later."""


M = TypeVar("M")


class LazyModel(Generic[M]):
    """A model loaded on first use, once per process, under a lock (worker threads may ask at the same time)."""

    def __init__(self, load: Callable[[], M]) -> None:
        self._load = load
        self._model: M | None = None
        self._lock = threading.Lock()

    def get(self) -> M:
        model = self._model
        if model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
                model = self._model
        return model

    @property
    def loaded(self) -> bool:
        return self._model is not None


class Analyzer(ABC):
    """Turns one media item into one structured result (with, optionally, embeddings, texts and files)."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    media_kinds: ClassVar[frozenset[MediaKind]] = frozenset(MediaKind)
    needs: ClassVar[frozenset[Need]] = frozenset({Need.ORIGINAL})
    #: "cpu", or the name of a configured model endpoint.
    runs_on: ClassVar[str] = "cpu"
    result_model: ClassVar[type[BaseModel]]

    @abstractmethod
    async def analyze(self, item: AnalysisInput) -> BaseModel | AnalysisOutput:
        """Analyse one media item; raise an `AimaError` for problems the user should see."""

    def check(self) -> None:  # noqa: B027 (optional: most analyzers have nothing to check)
        """Raise `ModelNotInstalled` (saying how to install it) when the model this analyzer needs is missing.
        Cheap: it looks for files, it does not load them. Workers call it at startup for the analyzers they run."""

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """The citable items of a stored result of this analyzer (its `result_model` dumped as JSON), for the
        dossier: each with a key unique in the result. The default offers none (the result is cited whole)."""
        return []

    def accepts(self, kind: MediaKind) -> bool:
        return kind in self.media_kinds


class BlockingAnalyzer(Analyzer):
    """An analyzer whose work is CPU-bound library code; it runs in a worker thread, never on the event loop."""

    @abstractmethod
    def analyze_blocking(self, item: AnalysisInput) -> BaseModel | AnalysisOutput:
        """Do the work synchronously; called in a thread."""

    async def analyze(self, item: AnalysisInput) -> BaseModel | AnalysisOutput:
        return await asyncio.to_thread(self.analyze_blocking, item)


@dataclass(frozen=True)
class CaseMedia:
    media_id: str
    kind: MediaKind
    filename: str
    content_type: str
    duration_s: float | None
    uploaded_at: str


@dataclass(frozen=True)
class IdentityCluster:
    """A person (faces) or a voice (speaker turns) of the case, as clustered and corrected by users."""

    cluster_id: str
    kind: str  # "face" | "voice"
    label: str | None
    #: (media id, analyzer, key) of each member: the face's or the turn's evidence item.
    members: Sequence[tuple[str, str, str]]


@dataclass(frozen=True)
class MissingAnalysis:
    """An analysis of the job that did not succeed (or never ran), and why: the dossier names what it lacks."""

    media_id: str
    analyzer: str
    reason: str


@dataclass(frozen=True)
class CaseInput:
    """A whole case as a case analyzer (the fusion) sees it, read by the worker once the job's other tasks ended."""

    case_id: str
    title: str
    media: Sequence[CaseMedia]
    #: Every stored result of the case's media by (media id, analyzer name): the result's JSON payload.
    results: Mapping[tuple[str, str], Mapping[str, Any]]
    #: Every citable item of those results (`Analyzer.evidence`); a dossier may cite only these.
    evidence: Sequence[EvidenceItem]
    identities: Sequence[IdentityCluster]
    missing: Sequence[MissingAnalysis]
    inference: Endpoints | None = None
    report_progress: ProgressCallback = field(default=_ignore_progress)
    #: The number the dossier made from this input will have (1 for a case's first).
    version: int = 1


class CaseAnalyzer(ABC):
    """Turns a whole case into one result (the dossier): runs once per job, after the job's media tasks ended
    (whatever their outcome), as a case-level task. Registered through `register_analyzers` like the others."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    #: "cpu", or the name of a configured model endpoint.
    runs_on: ClassVar[str] = "cpu"
    result_model: ClassVar[type[BaseModel]]

    @abstractmethod
    async def analyze_case(self, item: CaseInput) -> BaseModel:
        """Analyse the case; raise an `AimaError` for problems the user should see."""

    def citations(self, result: BaseModel) -> Sequence[Any]:
        """The `aima.dossier.Citation`s in a result, which the server checks against the case's evidence."""
        return []

    def check(self) -> None:  # noqa: B027 (optional)
        """Raise `ModelNotInstalled` when something this analyzer needs is missing (see `Analyzer.check`)."""


class Embedder(ABC):
    """Turns texts into normalised vectors of `dimension` (``text_embeddings`` holds 384). Blocking; the worker calls
    it in a thread. The first registered embedder embeds every analyzer's `SearchableText`, and search queries."""

    name: ClassVar[str]
    dimension: ClassVar[int]

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, each of unit length."""

    def check(self) -> None:  # noqa: B027 (optional: most analyzers have nothing to check)
        """Raise `ModelNotInstalled` when the model is missing (see `Analyzer.check`)."""


#: The `register` callback handed to `register_analyzers` (media analyzers and case analyzers alike).
RegisterAnalyzer = Callable[["Analyzer | CaseAnalyzer"], None]
#: The `register` callback handed to `register_embedders`.
RegisterEmbedder = Callable[[Embedder], None]
#: A plugin's own settings: the ``[plugins.<name>]`` table of aima.toml, or ``AIMA_PLUGINS__<NAME>__<KEY>``
#: variables (keys in lower case), as plain values for the plugin to validate with its own pydantic model.
PluginConfig = Mapping[str, Mapping[str, Any]]
