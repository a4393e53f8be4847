"""The ``llava`` analyzer: a structured description of an image or of every keyframe of a video, as a timeline.

Besides the result it offers each keyframe's description as searchable text and as citable evidence for the dossier,
and asks for face detection when a picture shows people or the model was unsure of what it saw.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    Analyzer,
    EvidenceItem,
    MediaKind,
    Need,
    SearchableText,
)
from aima.errors import AimaError, AnalyzerNotApplicable, CorruptMedia
from aima.inference import Endpoint
from aima.vision import FrameDescription, TimelineEntry, VisualDescription
from aima_llava.describe import Described, describe_keyframes
from aima_llava.settings import DEFAULT_ENDPOINT, LlavaSettings

logger = logging.getLogger(__name__)


class NoModelEndpoints(AimaError):
    """The worker that ran the task has no model endpoints: it was not started with an ``[inference]`` section."""

    code = "MODEL_NOT_CONFIGURED"


class LlavaAnalyzer(Analyzer):
    name = "llava"
    version = "1.0.0"
    description = (
        "What a vision-language model (LLaVA-1.6 on TGI, or any OpenAI-compatible server) sees in an image or in "
        "each keyframe of a video: scene, setting, objects, people (count, appearance, actions, positions; never "
        "names), visible text, and notable and sensitive elements (weapons, restraints, injuries), with confidences."
    )
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    needs = frozenset({Need.KEYFRAMES})
    runs_on = DEFAULT_ENDPOINT
    result_model = VisualDescription

    def __init__(self, settings: LlavaSettings | None = None) -> None:
        self.settings = settings or LlavaSettings()
        # The contract declares runs_on per class; this analyzer's queue is its configured endpoint's, per instance.
        vars(self)["runs_on"] = self.settings.queue

    async def analyze(self, item: AnalysisInput) -> AnalysisOutput:
        if item.kind not in self.media_kinds:
            raise AnalyzerNotApplicable(f"The vision analyzer describes images and videos, not {item.kind} media.")
        endpoint = self._endpoint(item)
        if not item.keyframes:
            raise CorruptMedia("The media item has no keyframes to describe.")
        started = time.monotonic()
        video = item.kind is MediaKind.VIDEO

        def progress(done: int, total: int) -> None:
            item.report_progress(done / total, f"described keyframe {done} of {total}")

        outcome = await describe_keyframes(endpoint, item.keyframes, self.settings, video=video, progress=progress)
        if not outcome.described:
            raise outcome.failed[0]
        described = sorted(outcome.described, key=lambda d: (d.keyframe.timestamp_s, d.index))
        result = VisualDescription(
            kind="video" if video else "image",
            model=next((d.model for d in described if d.model), "") or endpoint.model or endpoint.name,
            endpoint=endpoint.name,
            timeline=[
                TimelineEntry(keyframe=d.index, timestamp_s=d.keyframe.timestamp_s, description=d.description)
                for d in described
            ],
            failed=[f.message for f in sorted(outcome.failed, key=lambda f: f.index)],
        )
        logger.info(
            "llava described %d of %d keyframes of media %s on %s in %.1f s (%d repaired, %d tokens)",
            len(described),
            len(item.keyframes),
            item.media_id,
            endpoint.name,
            time.monotonic() - started,
            sum(d.repaired for d in described),
            sum(d.completion_tokens for d in described),
        )
        return AnalysisOutput(
            result=result,
            texts=[_searchable(d, timed=video) for d in described],
            follow_ups=self._follow_ups(result),
        )

    def _endpoint(self, item: AnalysisInput) -> Endpoint:
        if item.inference is None:
            raise NoModelEndpoints(
                "The vision analyzer needs a model endpoint, but no model endpoints are configured for this worker "
                f"(configure [inference.endpoints.{self.runs_on}])."
            )
        if self.settings.endpoint is not None:
            return item.inference.get(self.settings.endpoint)
        endpoint = item.inference.vision
        if endpoint.name != self.runs_on:
            logger.warning(
                "llava tasks are queued for %r but the vision endpoint is %r: set [plugins.llava] endpoint = %r",
                self.runs_on,
                endpoint.name,
                endpoint.name,
            )
        return endpoint

    def _follow_ups(self, result: VisualDescription) -> list[str]:
        """Face detection when someone is in the picture, or when the model was unsure what it saw."""
        if self.settings.follow_up is None or not result.timeline:
            return []
        people = any(entry.description.people.count > 0 for entry in result.timeline)
        if people or overall_confidence(result) < self.settings.low_confidence:
            return [self.settings.follow_up]
        return []

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """One item per described keyframe (key ``keyframe-{index}``), for the dossier to cite."""
        try:
            result = VisualDescription.model_validate(payload)
        except ValidationError:
            logger.warning(
                "a stored llava result of media %s does not fit VisualDescription; nothing to cite", media_id
            )
            return []
        return [
            EvidenceItem(
                media_id=media_id,
                analyzer=self.name,
                key=f"keyframe-{entry.keyframe}",
                kind="scene",
                summary=summary(entry.description),
                start_s=entry.timestamp_s,
                keyframe=entry.keyframe,
                confidence=entry.description.confidence,
            )
            for entry in result.timeline
        ]


def overall_confidence(result: VisualDescription) -> float:
    """The mean of the keyframes' own confidences (1.0 for an empty timeline: nothing was doubted)."""
    if not result.timeline:
        return 1.0
    return statistics.fmean(entry.description.confidence for entry in result.timeline)


def summary(description: FrameDescription) -> str:
    """The scene, then the notable elements' labels (sensitive ones marked): what the fusion reads of a keyframe."""
    labels = [f"{n.label} (sensitive)" if n.sensitive else n.label for n in description.notable]
    scene = description.scene.strip()
    return f"{scene} Notable: {', '.join(labels)}." if labels else scene


def _searchable(described: Described, *, timed: bool) -> SearchableText:
    description = described.description
    parts = [description.scene.strip(), description.setting.strip()]
    parts += [f"{n.label}: {n.description}".strip() for n in description.notable]
    return SearchableText(
        key=f"keyframe-{described.index}",
        text=" ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p),
        start_s=described.keyframe.timestamp_s if timed else None,
        end_s=described.keyframe.timestamp_s if timed else None,
        fields={
            "keyframe": described.index,
            "confidence": description.confidence,
            "people": description.people.count,
            "sensitive": [n.label for n in description.notable if n.sensitive],
        },
    )
