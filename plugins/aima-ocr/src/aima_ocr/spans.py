"""Spans: a text read on consecutive keyframes is one span with its first and last timestamp.

Lines are matched by text, not by place, so a sign the camera pans across stays one span. Texts are compared
without case and spaces (the recogniser drops and inserts spaces from frame to frame), and, below a similarity of 1,
with difflib's ratio so that a character misread on one frame does not cut the span in two; digits must agree
exactly (a platform, house or plate number is the point of the text). Each span takes at most one line per keyframe,
so two identical signs in one picture make two spans.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from aima_ocr.results import OcrLine, OcrSpan


def normalise(text: str) -> str:
    return "".join(text.split()).casefold()


@dataclass
class _Span:
    #: The normalised texts of its best and of its latest reading, which new lines are compared with.
    normalised: set[str]
    best: OcrLine
    first_s: float
    last_s: float
    first_frame: int
    last_frame: int
    lines: list[OcrLine] = field(default_factory=list)

    def add(self, line: OcrLine, frame: int, timestamp_s: float) -> None:
        self.lines.append(line)
        self.last_frame, self.last_s = frame, timestamp_s
        if line.confidence > self.best.confidence:
            self.best = line
        self.normalised = {normalise(self.best.text), normalise(line.text)}

    def to_model(self, number: int) -> OcrSpan:
        readings = Counter(line.text for line in self.lines if line.text != self.best.text)
        return OcrSpan(
            key=f"span-{number}",
            text=self.best.text,
            confidence=self.best.confidence,
            variants=[text for text, _ in readings.most_common()],
            first_s=self.first_s,
            last_s=self.last_s,
            first_frame=self.first_frame,
            last_frame=self.last_frame,
            frames=len(self.lines),
            box=self.lines[0].box,
            line_keys=[line.key for line in self.lines],
        )


def _similarity(a: str, b: str) -> float:
    """1 for equal texts; 0 when their digits differ (platform 42 is not platform 43); else difflib's ratio."""
    if a == b:
        return 1.0
    if [c for c in a if c.isdigit()] != [c for c in b if c.isdigit()]:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


class SpanTracker:
    """Fed every analysed keyframe in time order (those without text too: they end the open spans)."""

    def __init__(self, similarity: float) -> None:
        self._similarity = similarity
        self._open: list[_Span] = []
        self._all: list[_Span] = []

    def add(self, frame: int, timestamp_s: float, lines: Sequence[OcrLine]) -> None:
        candidates = list(self._open)
        still_open: list[_Span] = []
        for line in lines:
            text = normalise(line.text)
            span = self._best_match(text, candidates)
            if span is None:
                span = _Span({text}, line, timestamp_s, timestamp_s, frame, frame)
                self._all.append(span)
            else:
                candidates.remove(span)
            span.add(line, frame, timestamp_s)
            still_open.append(span)
        self._open = still_open

    def _best_match(self, text: str, candidates: Sequence[_Span]) -> _Span | None:
        best: _Span | None = None
        best_score = -1.0
        for span in candidates:
            score = max(_similarity(seen, text) for seen in span.normalised)
            if score >= self._similarity and score > best_score:
                best, best_score = span, score
        return best

    def spans(self) -> list[OcrSpan]:
        """The spans, numbered in order of first appearance (then reading order)."""
        return [span.to_model(number) for number, span in enumerate(self._all)]
