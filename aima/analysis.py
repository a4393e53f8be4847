"""What a plugin implements: analyzers, and the inputs and results they exchange with the core.

An analyzer is a small object with a name, a version, the media kinds it accepts, what it needs and what it runs on.
The worker hands it an `AnalysisInput` and stores the pydantic model it returns, keyed by
(media, analyzer name, analyzer version).
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

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


class Analyzer(ABC):
    """Turns one media item into one structured result."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    media_kinds: ClassVar[frozenset[MediaKind]] = frozenset(MediaKind)
    needs: ClassVar[frozenset[Need]] = frozenset({Need.ORIGINAL})
    #: "cpu", or the name of a configured model endpoint.
    runs_on: ClassVar[str] = "cpu"
    result_model: ClassVar[type[BaseModel]]

    @abstractmethod
    async def analyze(self, item: AnalysisInput) -> BaseModel:
        """Analyse one media item; raise an `AimaError` for problems the user should see."""

    def accepts(self, kind: MediaKind) -> bool:
        return kind in self.media_kinds


class BlockingAnalyzer(Analyzer):
    """An analyzer whose work is CPU-bound library code; it runs in a worker thread, never on the event loop."""

    @abstractmethod
    def analyze_blocking(self, item: AnalysisInput) -> BaseModel:
        """Do the work synchronously; called in a thread."""

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        return await asyncio.to_thread(self.analyze_blocking, item)


#: The `register` callback handed to `register_analyzers`.
RegisterAnalyzer = Callable[[Analyzer], None]
