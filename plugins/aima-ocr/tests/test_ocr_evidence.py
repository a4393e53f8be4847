"""Evidence items of a stored OCR result: one per span, under its searchable text's key, so that search hits and
dossier citations name the same text; read from pictures rendered here with the real RapidOCR models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from ocr_pictures import Placed, keyframes_item, render_texts
from PIL import Image

from aima.analysis import AnalysisOutput, MediaKind
from aima_ocr.analyzer import OcrAnalyzer
from aima_ocr.results import OcrResult
from aima_ocr.settings import OcrSettings
from aima_ocr.spans import normalise


@pytest.fixture(scope="module")
def analyzer() -> OcrAnalyzer:
    """Detection at the pictures' own size (360 px high, large print): faster than scaling them up."""
    return OcrAnalyzer(OcrSettings(detection_side=360))


def render(*texts: Placed) -> Image.Image:
    """Light text on a dark 640x360 picture."""
    return render_texts(texts)[0]


def stored(
    analyzer: OcrAnalyzer, tmp_path: Path, pictures: Sequence[Image.Image], times: Sequence[float], kind: MediaKind
) -> tuple[dict[str, Any], AnalysisOutput]:
    item = keyframes_item(tmp_path, pictures, times, kind)
    output = analyzer.analyze_blocking(item)
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, OcrResult)
    return output.result.model_dump(mode="json"), output


def upright(quadrilateral: Any) -> list[float]:
    xs, ys = [p[0] for p in quadrilateral], [p[1] for p in quadrilateral]
    return [min(xs), min(ys), max(xs), max(ys)]


def test_every_span_of_a_video_is_citable_under_its_searchable_key(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    sign = ((40, 40), "EXIT 12 NORTH")
    pictures = [render(sign, ((300, 250), "Bakery")), render(((80, 60), "EXIT 12 NORTH")), render()]
    payload, output = stored(analyzer, tmp_path, pictures, [3.0, 10.0, 14.0], MediaKind.VIDEO)

    items = analyzer.evidence("media-1", payload)
    assert [i.key for i in items] == [t.key for t in output.texts] == ["span-0", "span-1"]
    assert [(i.summary, i.start_s, i.end_s) for i in items] == [(t.text, t.start_s, t.end_s) for t in output.texts]
    assert [(normalise(i.summary), i.start_s, i.end_s, i.keyframe) for i in items] == [
        ("exit12north", 3.0, 10.0, 0),
        ("bakery", 3.0, 3.0, 0),
    ]
    for i, text in zip(items, output.texts, strict=True):
        assert list(i.box or ()) == upright(text.fields["box"])  # where it was first read
        assert i.confidence == text.fields["confidence"] and i.confidence is not None and i.confidence > 0.8
    x1, y1, x2, y2 = items[0].box or ()
    assert 30 < x1 < 50 and 35 < y1 < 55 and x2 > 300 and y2 < 100
    assert {(i.media_id, i.analyzer, i.kind) for i in items} == {("media-1", "ocr", "text")}


def test_a_pictures_text_carries_no_time(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    payload, output = stored(analyzer, tmp_path, [render(((40, 140), "EVIDENCE ROOM 7"))], [0.0], MediaKind.IMAGE)
    [item] = analyzer.evidence("media-1", payload)
    [text] = output.texts
    assert (item.key, item.summary, item.start_s, item.end_s, item.keyframe) == (text.key, text.text, None, None, 0)
    assert text.start_s is None and normalise(item.summary) == "evidenceroom7"


def test_a_result_of_another_shape_offers_nothing_instead_of_failing(analyzer: OcrAnalyzer) -> None:
    span = {
        "key": "span-0",
        "text": "EXIT",
        "confidence": 0.9,
        "variants": [],
        "first_s": 2.0,
        "last_s": 5.0,
        "first_frame": 1,
        "last_frame": 2,
        "frames": 2,
        "box": [[1, 2], [30, 2], [30, 12], [1, 12]],
        "line_keys": ["line-1-0", "line-2-0"],
    }
    payload = {"engine": "e", "frames_analyzed": 3, "line_count": 2, "frames": [], "spans": [span]}
    [item] = analyzer.evidence("m", payload)
    assert (item.key, item.start_s, item.end_s, item.keyframe, list(item.box or ())) == (
        "span-0",
        2.0,
        5.0,
        1,
        [1.0, 2.0, 30.0, 12.0],
    )
    assert analyzer.evidence("m", {}) == []
    assert analyzer.evidence("m", {"lines": [{"text": "EXIT", "bbox": [1, 2, 30, 12]}]}) == []
    assert analyzer.evidence("m", {**payload, "spans": [{"text": "EXIT", "start": 2.0}]}) == []
    # Frames of another shape do not hide the spans.
    assert [i.key for i in analyzer.evidence("m", {**payload, "frames": [{"t": 1}]})] == ["span-0"]
