"""The ``ocr`` analyzer: text read on every keyframe, spans of text that stays on screen, searchable texts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import TypeAdapter

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    EvidenceItem,
    Keyframe,
    LazyModel,
    MediaKind,
    Need,
    SearchableText,
    stored_items,
)
from aima.errors import CorruptMedia
from aima_ocr.engine import Image as Picture
from aima_ocr.engine import OcrEngine, ReadLine, check_model_files, engine_name
from aima_ocr.layout import reading_rows
from aima_ocr.results import OcrFrame, OcrLine, OcrResult, OcrSpan, Point
from aima_ocr.settings import OcrSettings
from aima_ocr.spans import SpanTracker

logger = logging.getLogger(__name__)

#: What `evidence` reads of a stored result: the spans (the searchable texts), whatever else the result's shape.
_SPANS = TypeAdapter(list[OcrSpan])


class OcrAnalyzer(BlockingAnalyzer):
    name = "ocr"
    version = "1.0.0"
    description = (
        "Text in images and video keyframes (signs, captions, documents, screens), read with RapidOCR's PP-OCRv4 "
        "models: each line with its box and confidence, and spans of text that stays on screen across keyframes."
    )
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    needs = frozenset({Need.KEYFRAMES})
    runs_on = "cpu"
    result_model = OcrResult

    def __init__(self, settings: OcrSettings | None = None) -> None:
        self.settings = settings or OcrSettings()
        self._engine = LazyModel(lambda: OcrEngine(self.settings))

    def check(self) -> None:
        check_model_files(self.settings)

    def analyze_blocking(self, item: AnalysisInput) -> AnalysisOutput:
        engine = self._engine.get()
        tracker = SpanTracker(self.settings.span_similarity)
        frames: list[OcrFrame] = []
        total = len(item.keyframes)
        started = time.perf_counter()
        in_time_order = sorted(enumerate(item.keyframes), key=lambda pair: pair[1].timestamp_s)
        for done, (index, keyframe) in enumerate(in_time_order, start=1):
            frame = self._read_frame(engine, index, keyframe)
            tracker.add(index, keyframe.timestamp_s, frame.lines)
            if frame.lines:
                frames.append(frame)
            item.report_progress(done / total, f"keyframe {done} of {total}: {len(frame.lines)} lines")
        spans = tracker.spans()
        logger.info(
            "ocr of media %s: %d lines on %d of %d keyframes, %d spans in %.1f s",
            item.media_id,
            sum(len(f.lines) for f in frames),
            len(frames),
            total,
            len(spans),
            time.perf_counter() - started,
        )
        result = OcrResult(
            engine=engine_name(),
            frames_analyzed=total,
            line_count=sum(len(f.lines) for f in frames),
            frames=frames,
            spans=spans,
        )
        return AnalysisOutput(result=result, texts=[_searchable(span, item.kind) for span in spans])

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """Each span, under the key of its searchable text, so a search hit and a dossier citation name the same
        item: its text, where it was first read (keyframe and bounding box) and, in a video, when it was on screen.
        A picture (one keyframe, at 0 s) gives no time, as its searchable texts do. A stored result whose spans have
        another shape offers none (it is cited whole)."""
        spans = stored_items(_SPANS, payload, "spans", media_id=media_id, what="ocr result")
        if spans is None:
            return []
        timed = payload.get("frames_analyzed") != 1 or any(span.last_s > 0 for span in spans)
        return [
            EvidenceItem(
                media_id=media_id,
                analyzer=self.name,
                key=span.key,
                kind="text",
                summary=span.text,
                start_s=span.first_s if timed else None,
                end_s=span.last_s if timed else None,
                keyframe=span.first_frame,
                box=bounds(span.box),
                confidence=span.confidence,
            )
            for span in spans
        ]

    def _read_frame(self, engine: OcrEngine, index: int, keyframe: Keyframe) -> OcrFrame:
        picture = _load_bgr(keyframe.path, index)
        height, width = picture.shape[:2]
        found = [line for line in engine.read(picture) if _length(line.text) >= self.settings.min_chars]
        rows = reading_rows(found)
        lines: list[OcrLine] = []
        for read in (line for row in rows for line in row):
            lines.append(_line(read, f"line-{index}-{len(lines)}"))
        text = "\n".join(" ".join(read.text.strip() for read in row) for row in rows)
        return OcrFrame(
            index=index, timestamp_s=keyframe.timestamp_s, width=width, height=height, lines=lines, text=text
        )


def _length(text: str) -> int:
    return sum(1 for char in text if not char.isspace())


def _line(read: ReadLine, key: str) -> OcrLine:
    box = [(round(x, 1), round(y, 1)) for x, y in read.box]
    return OcrLine(key=key, text=read.text.strip(), box=box, confidence=round(read.confidence, 4))


def bounds(quadrilateral: Sequence[Point]) -> list[float]:
    """[x1, y1, x2, y2]: the upright rectangle around a read quadrilateral, the shape of other analyzers' boxes."""
    xs, ys = [x for x, _ in quadrilateral], [y for _, y in quadrilateral]
    return [min(xs), min(ys), max(xs), max(ys)]


def _load_bgr(path: Path, index: int) -> Picture:
    """The keyframe as an upright 8-bit BGR array (what RapidOCR reads)."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise CorruptMedia(f"Keyframe {index} could not be decoded for OCR: {exc}") from exc
    rgb = np.asarray(upright, dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _searchable(span: OcrSpan, kind: MediaKind) -> SearchableText:
    timed = kind is MediaKind.VIDEO
    return SearchableText(
        key=span.key,
        text=span.text,
        start_s=span.first_s if timed else None,
        end_s=span.last_s if timed else None,
        fields={
            "box": [list(point) for point in span.box],
            "confidence": span.confidence,
            "first_frame": span.first_frame,
            "last_frame": span.last_frame,
            "frames": span.frames,
        },
    )
