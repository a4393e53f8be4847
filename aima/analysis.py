"""What a plugin implements: analyzers, and the inputs and results they exchange with the core.

An analyzer is a small object with a name, a version, the media kinds it accepts, what it needs and what it runs on.
The worker hands it an `AnalysisInput` and stores the pydantic model it returns, keyed by
(media, analyzer name, analyzer version).
"""

from __future__ import annotations

import asyncio
import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel


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

    def accepts(self, kind: MediaKind) -> bool:
        return kind in self.media_kinds


class BlockingAnalyzer(Analyzer):
    """An analyzer whose work is CPU-bound library code; it runs in a worker thread, never on the event loop."""

    @abstractmethod
    def analyze_blocking(self, item: AnalysisInput) -> BaseModel | AnalysisOutput:
        """Do the work synchronously; called in a thread."""

    async def analyze(self, item: AnalysisInput) -> BaseModel | AnalysisOutput:
        return await asyncio.to_thread(self.analyze_blocking, item)


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


#: The `register` callback handed to `register_analyzers`.
RegisterAnalyzer = Callable[[Analyzer], None]
#: The `register` callback handed to `register_embedders`.
RegisterEmbedder = Callable[[Embedder], None]
#: A plugin's own settings: the ``[plugins.<name>]`` table of aima.toml, or ``AIMA_PLUGINS__<NAME>__<KEY>``
#: variables (keys in lower case), as plain values for the plugin to validate with its own pydantic model.
PluginConfig = Mapping[str, Mapping[str, Any]]
