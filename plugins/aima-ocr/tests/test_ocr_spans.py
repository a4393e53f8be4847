"""Spans and reading order on lines made here (no model)."""

from __future__ import annotations

from aima_ocr.layout import reading_rows
from aima_ocr.results import OcrLine
from aima_ocr.spans import SpanTracker


def _line(key: str, text: str, x: float = 0, y: float = 0, confidence: float = 0.9, w: float = 100) -> OcrLine:
    return OcrLine(key=key, text=text, box=[(x, y), (x + w, y), (x + w, y + 20), (x, y + 20)], confidence=confidence)


def test_spans_join_readings_that_differ_in_case_spaces_and_one_character() -> None:
    tracker = SpanTracker(similarity=0.8)
    tracker.add(0, 0.0, [_line("a", "POLICE LINE", confidence=0.8)])
    tracker.add(1, 2.0, [_line("b", "Police  Line", confidence=0.95)])
    tracker.add(2, 4.0, [_line("c", "POLICE LlNE", confidence=0.7)])
    [span] = tracker.spans()
    assert (span.text, span.confidence, span.first_s, span.last_s, span.frames) == ("Police  Line", 0.95, 0.0, 4.0, 3)
    assert span.variants == ["POLICE LINE", "POLICE LlNE"]
    assert span.line_keys == ["a", "b", "c"]


def test_similarity_one_joins_identical_texts_only() -> None:
    tracker = SpanTracker(similarity=1.0)
    tracker.add(0, 0.0, [_line("a", "POLICE LINE")])
    tracker.add(1, 2.0, [_line("b", "police line")])
    tracker.add(2, 4.0, [_line("c", "POLICE LlNE")])
    assert [(s.first_s, s.last_s) for s in tracker.spans()] == [(0.0, 2.0), (4.0, 4.0)]


def test_a_keyframe_without_the_text_ends_its_span() -> None:
    tracker = SpanTracker(similarity=0.8)
    tracker.add(0, 0.0, [_line("a", "EXIT")])
    tracker.add(1, 1.0, [])
    tracker.add(2, 2.0, [_line("b", "EXIT")])
    assert [(s.key, s.first_frame, s.last_frame) for s in tracker.spans()] == [("span-0", 0, 0), ("span-1", 2, 2)]


def test_two_identical_signs_in_one_picture_are_two_spans() -> None:
    tracker = SpanTracker(similarity=0.8)
    tracker.add(0, 0.0, [_line("a", "EXIT", x=0), _line("b", "EXIT", x=300)])
    tracker.add(1, 1.0, [_line("c", "EXIT", x=10)])
    spans = tracker.spans()
    assert [s.line_keys for s in spans] == [["a", "c"], ["b"]]


def test_unrelated_texts_are_not_joined() -> None:
    tracker = SpanTracker(similarity=0.8)
    tracker.add(0, 0.0, [_line("a", "Platform 42")])
    tracker.add(1, 1.0, [_line("b", "Platform 43")])
    assert len(tracker.spans()) == 2


def test_lines_on_one_row_are_read_left_to_right_before_the_next_row() -> None:
    right = _line("right", "Berlin", x=300, y=2)
    left = _line("left", "Main Street 42,", x=0, y=0)
    below = _line("below", "Open 9-17", x=0, y=60)
    assert [[line.key for line in row] for row in reading_rows([below, right, left])] == [["left", "right"], ["below"]]
