"""What the dossier had to do without: the job's analyses that did not succeed, and pictures nobody described.

The reader (and the model) must know that "no restraint seen" may only mean "no picture was looked at".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from aima.analysis import CaseInput, MediaKind
from aima.dossier import MissingModality
from aima.vision import VisualDescription

#: The modality each known analyzer stands for; others are named after their analyzer.
MODALITIES = {
    "whisper": "speech",
    "speakers": "voices",
    "faces": "faces",
    "ocr": "text",
}
VISION = "vision"


def modality_of(analyzer: str, vision_analyzers: Iterable[str]) -> str:
    if analyzer in vision_analyzers:
        return VISION
    return MODALITIES.get(analyzer, analyzer)


def is_vision_result(analyzer: str, payload: Mapping[str, Any], vision_analyzers: Iterable[str]) -> bool:
    """A picture description: from a vision analyzer, or any result in the shape of one."""
    if analyzer in vision_analyzers:
        return True
    if "timeline" not in payload:
        return False
    try:
        VisualDescription.model_validate(payload)
    except ValidationError:
        return False
    return True


def missing_modalities(case: CaseInput, vision_analyzers: tuple[str, ...]) -> list[MissingModality]:
    """The case's missing analyses as modalities, and ``vision`` when images or videos exist but no result
    describes any picture (and the missing analyses do not already say so for each of them)."""
    found: dict[tuple[str, str | None], MissingModality] = {}
    for missing in case.missing:
        modality = modality_of(missing.analyzer, vision_analyzers)
        found.setdefault(
            (modality, missing.media_id),
            MissingModality(modality=modality, media_id=missing.media_id, reason=missing.reason[:2000]),
        )
    visual = [m.media_id for m in case.media if m.kind in (MediaKind.IMAGE, MediaKind.VIDEO)]
    described = any(is_vision_result(a, p, vision_analyzers) for (_, a), p in case.results.items())
    if visual and not described and not all((VISION, media_id) in found for media_id in visual):
        found[(VISION, None)] = MissingModality(
            modality=VISION,
            reason=(
                f"No picture of the case was described: none of its {len(visual)} image(s) and video(s) has a "
                "vision result, so what the pictures show is known only from faces and on-screen text, if at all."
            ),
        )
    return list(found.values())
