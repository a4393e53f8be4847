"""The OCR analyzer on pictures rendered here: real RapidOCR models from the pip package, no fakes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ocr_pictures import keyframes_item, render_texts
from PIL import Image

from aima.analysis import AnalysisInput, AnalysisOutput, MediaKind, ModelNotInstalled
from aima.errors import CorruptMedia, InvalidInput
from aima_ocr.analyzer import OcrAnalyzer
from aima_ocr.results import OcrResult
from aima_ocr.settings import OcrSettings, ocr_settings
from aima_ocr.spans import normalise


def _run(analyzer: OcrAnalyzer, item: AnalysisInput) -> tuple[OcrResult, AnalysisOutput]:
    output = analyzer.analyze_blocking(item)
    assert isinstance(output, AnalysisOutput)
    assert isinstance(output.result, OcrResult)
    return output.result, output


def _inside(box: Sequence[tuple[float, float]], drawn: tuple[float, float, float, float], slack: float) -> bool:
    """Whether the read box covers the drawn text's box, give or take `slack` pixels."""
    xs, ys = [x for x, _ in box], [y for _, y in box]
    left, top, right, bottom = drawn
    return (
        min(xs) <= left + slack
        and min(ys) <= top + slack
        and max(xs) >= right - slack
        and max(ys) >= bottom - slack
        and min(xs) >= left - 3 * slack
        and max(xs) <= right + 3 * slack
    )


@pytest.fixture(scope="module")
def analyzer() -> OcrAnalyzer:
    return OcrAnalyzer()


@pytest.fixture(scope="module")
def quick() -> OcrAnalyzer:
    """Detection at the pictures' own size (360 px high, large print) instead of scaled up to 736: faster tests."""
    return OcrAnalyzer(OcrSettings(detection_side=360))


def test_rendered_text_is_read_back_with_boxes_in_pixels(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    picture, drawn = render_texts([((40, 40), "EXIT 12 NORTH"), ((300, 250), "Bakery")])
    result, output = _run(analyzer, keyframes_item(tmp_path, [picture], [0.0], MediaKind.IMAGE))

    [frame] = result.frames
    assert (frame.index, frame.timestamp_s, frame.width, frame.height) == (0, 0.0, 640, 360)
    assert [normalise(line.text) for line in frame.lines] == ["exit12north", "bakery"]
    assert [line.key for line in frame.lines] == ["line-0-0", "line-0-1"]
    for line, box in zip(frame.lines, drawn, strict=True):
        assert line.confidence > 0.8
        assert _inside(line.box, box, slack=12), (line.box, box)
    assert normalise(frame.text) == "exit12northbakery"
    assert frame.text.count("\n") == 1
    assert result.frames_analyzed == 1 and result.line_count == 2
    assert [t.key for t in output.texts] == ["span-0", "span-1"]
    assert all(t.start_s is None and t.end_s is None for t in output.texts)  # an image has no time
    assert output.texts[0].fields["box"] == [list(p) for p in frame.lines[0].box]


def test_upside_down_text_is_turned_before_it_is_read(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    picture, _ = render_texts([((40, 140), "EVIDENCE ROOM 7")])
    result, _ = _run(analyzer, keyframes_item(tmp_path, [picture.rotate(180)], [0.0], MediaKind.IMAGE))
    assert [normalise(line.text) for line in result.frames[0].lines] == ["evidenceroom7"]


def test_a_picture_without_text_gives_no_lines(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    y, x = np.mgrid[0:360, 0:640]
    gradient = np.stack([x * 255 / 640, y * 255 / 360, (x + y) * 255 / 1000], axis=-1).astype(np.uint8)
    result, output = _run(analyzer, keyframes_item(tmp_path, [Image.fromarray(gradient)], [0.0], MediaKind.IMAGE))
    assert (result.frames, result.spans, result.line_count, result.frames_analyzed) == ([], [], 0, 1)
    assert list(output.texts) == []


def test_a_large_picture_is_scaled_down_and_boxes_stay_in_its_pixels(tmp_path: Path) -> None:
    small = OcrAnalyzer(OcrSettings(max_side=1000, detection_side=320))
    picture, [drawn] = render_texts([((200, 400), "Hamburg Hauptbahnhof")], size=(3000, 1000), font_size=120)
    result, _ = _run(small, keyframes_item(tmp_path, [picture], [0.0], MediaKind.IMAGE))
    [line] = result.frames[0].lines
    assert normalise(line.text) == "hamburghauptbahnhof"
    assert _inside(line.box, drawn, slack=36), (line.box, drawn)


def test_text_staying_on_screen_is_one_span_with_first_and_last_time(quick: OcrAnalyzer, tmp_path: Path) -> None:
    """A sign on every keyframe from 3 s to 20 s while the camera moves; a shop name seen, lost, seen again."""
    sign = "EXIT 12 NORTH"
    pictures = [
        render_texts([])[0],
        render_texts([((40, 40), sign), ((300, 250), "Bakery")])[0],
        render_texts([((80, 60), sign)])[0],
        render_texts([((120, 90), sign), ((260, 260), "Bakery")])[0],
        render_texts([])[0],
    ]
    progress: list[tuple[float, str]] = []
    item = keyframes_item(tmp_path, pictures, [0.0, 3.0, 10.0, 20.0, 25.0], MediaKind.VIDEO)
    item = dataclasses.replace(item, report_progress=lambda f, m: progress.append((f, m)))
    result, output = _run(quick, item)

    assert result.frames_analyzed == 5
    assert [f.index for f in result.frames] == [1, 2, 3]
    assert [line.key for f in result.frames for line in f.lines] == [
        "line-1-0",
        "line-1-1",
        "line-2-0",
        "line-3-0",
        "line-3-1",
    ]
    spans = [(normalise(s.text), s.first_s, s.last_s, s.first_frame, s.last_frame, s.frames) for s in result.spans]
    assert spans == [
        ("exit12north", 3.0, 20.0, 1, 3, 3),
        ("bakery", 3.0, 3.0, 1, 1, 1),
        ("bakery", 20.0, 20.0, 3, 3, 1),
    ]
    assert result.spans[0].line_keys == ["line-1-0", "line-2-0", "line-3-0"]
    assert result.spans[0].box == result.frames[0].lines[0].box  # where it was first seen
    texts = [(t.key, normalise(t.text), t.start_s, t.end_s) for t in output.texts]
    assert texts == [
        ("span-0", "exit12north", 3.0, 20.0),
        ("span-1", "bakery", 3.0, 3.0),
        ("span-2", "bakery", 20.0, 20.0),
    ]
    assert [round(f, 2) for f, _ in progress] == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_a_keyframe_that_does_not_decode_is_corrupt_media(analyzer: OcrAnalyzer, tmp_path: Path) -> None:
    item = keyframes_item(tmp_path, [render_texts([])[0]], [0.0], MediaKind.IMAGE)
    item.keyframes[0].path.write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(CorruptMedia, match="Keyframe 0"):
        analyzer.analyze_blocking(item)


def test_check_finds_the_packaged_models_and_names_missing_ones(tmp_path: Path) -> None:
    OcrAnalyzer().check()
    missing = OcrAnalyzer(OcrSettings(rec_model_path=tmp_path / "latin_rec.onnx"))
    with pytest.raises(ModelNotInstalled, match=r"latin_rec\.onnx.*install it with: pip install rapidocr-onnxruntime"):
        missing.check()


def test_settings_are_validated_with_a_clear_message() -> None:
    assert ocr_settings({"ocr": {"min_confidence": "0.7", "use_angle_cls": "false"}}) == OcrSettings(
        min_confidence=0.7, use_angle_cls=False
    )
    with pytest.raises(InvalidInput, match="plugin 'ocr'"):
        ocr_settings({"ocr": {"min_confidance": 0.7}})


def test_worker_threads_may_share_one_analyzer(quick: OcrAnalyzer, tmp_path: Path) -> None:
    first = keyframes_item(tmp_path / "a", [render_texts([((40, 40), "GATE 7")])[0]], [0.0], MediaKind.IMAGE)
    second = keyframes_item(
        tmp_path / "b", [render_texts([((60, 200), "Pharmacy")], size=(800, 450))[0]], [0.0], MediaKind.IMAGE
    )
    alone = [_run(quick, item)[0] for item in (first, second)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda item: _run(quick, item)[0], [first, second]))
    assert together == alone
    assert [normalise(r.spans[0].text) for r in together] == ["gate7", "pharmacy"]
