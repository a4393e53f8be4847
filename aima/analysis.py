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
    """Inputs an analyzer asks the worker to prepare before it runs."""

    ORIGINAL = "original"
    KEYFRAMES = "keyframes"
    AUDIO_TRACK = "audio_track"


#: Reports progress from 0 to 1 with a short message; safe to call from a worker thread.
ProgressCallback = Callable[[float, str], None]


def _ignore_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class AnalysisInput:
    """One media item as an analyzer sees it: a local copy of the original and its registered facts."""

    media_id: str
    case_id: str
    kind: MediaKind
    content_type: str
    size_bytes: int
    sha256: str
    original_path: Path
    report_progress: ProgressCallback = field(default=_ignore_progress)


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
