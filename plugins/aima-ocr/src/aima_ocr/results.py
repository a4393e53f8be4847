"""The OCR result as stored in MongoDB: every line read on every keyframe, and the spans a text stays on screen."""

from __future__ import annotations

from pydantic import BaseModel, Field

#: A point in the keyframe's pixels: (x, y) from the top left corner.
Point = tuple[float, float]


class OcrLine(BaseModel):
    """One line of text read in one keyframe."""

    #: ``line-{frame}-{n}``: unique within the result; `frame` is the keyframe's index, `n` counts in reading order.
    key: str
    text: str
    #: The line's quadrilateral in the keyframe's pixels: top left, top right, bottom right, bottom left (as read).
    box: list[Point] = Field(min_length=4, max_length=4)
    #: Recognition confidence, 0 to 1.
    confidence: float


class OcrFrame(BaseModel):
    """The text read in one keyframe (keyframes without text are counted in `OcrResult.frames_analyzed` only)."""

    #: Position of the keyframe in the media's keyframes (0 for an image).
    index: int
    #: Seconds from the start of the media (0 for an image).
    timestamp_s: float
    width: int
    height: int
    #: The lines in reading order: top to bottom, and left to right within a row.
    lines: list[OcrLine]
    #: All lines as one text: lines on one row joined by a space, rows by a newline.
    text: str


class OcrSpan(BaseModel):
    """A text seen on consecutive keyframes of a video (a sign visible from 3 s to 20 s); on an image, one line."""

    #: ``span-{n}``, numbered by first appearance; also the key of the searchable text made from it.
    key: str
    #: The most confident reading.
    text: str
    confidence: float
    #: Other readings of the same text on other keyframes (OCR varies from frame to frame), most frequent first.
    variants: list[str]
    #: First and last keyframe timestamps where it was read; it may stay until the next keyframe after `last_s`.
    first_s: float
    last_s: float
    first_frame: int
    last_frame: int
    #: Keyframes it was read on.
    frames: int
    #: Where it was first read.
    box: list[Point] = Field(min_length=4, max_length=4)
    #: The `OcrLine` keys it was made of, in time order.
    line_keys: list[str]


class OcrResult(BaseModel):
    engine: str
    frames_analyzed: int
    line_count: int
    #: Keyframes with at least one line, in time order.
    frames: list[OcrFrame]
    spans: list[OcrSpan]
