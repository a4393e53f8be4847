"""What the face analyzer stores per media item: every face with where and when it was seen, and how it was found."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Point = tuple[float, float]
Box = tuple[float, float, float, float]


class DetectedFace(BaseModel):
    #: Stable within the result: ``face-{keyframe}-{n}``, n counting the keyframe's faces from left to right.
    key: str
    #: Index of the keyframe in the media's keyframe list (0 for an image).
    keyframe: int
    #: Seconds from the start of the media (0 for an image).
    timestamp_s: float
    #: [x1, y1, x2, y2] in pixels of the keyframe, clipped to it.
    box: Box
    #: Five points in pixels of the keyframe: eye, eye, nose tip, mouth corner, mouth corner, the first of each pair
    #: on the image's left. None when the detector gives none (the Haar cascade).
    landmarks: list[Point] | None = None
    #: The detector's confidence: a probability (0-1) for the pack's detector; for the Haar cascade, its last stage's
    #: weight, unbounded, higher meaning surer (see `ModelInfo.det_score_kind`).
    det_score: float
    #: File name of the face's JPEG crop among the result's files.
    crop: str
    #: Whether a 512-d identity embedding was stored for this face (key = this key, in ``face_embeddings``).
    has_embedding: bool
    #: How the face was aligned for its embedding: on its landmarks, or on a template placed in its box.
    alignment: Literal["landmarks", "box"] | None = None


class FrameFaces(BaseModel):
    keyframe: int
    timestamp_s: float
    width: int
    height: int
    scene_change: bool
    faces: int


class ModelInfo(BaseModel):
    #: "scrfd" (the pack's detector) or "opencv-haar" (the cascade shipped in opencv-python).
    detector: str
    #: The detector's file: the ONNX in the pack, or the cascade's XML.
    detector_file: str
    det_score_kind: Literal["probability", "haar-stage-weight"]
    #: The recognition model's file in the pack, or None when no pack with one is configured.
    recognizer_file: str | None = None
    embedding_dim: int | None = None
    #: The pack directory's name (e.g. "buffalo_l"), or None.
    pack: str | None = None
    det_size: int
    det_threshold: float | None = None
    min_face_px: int
    #: Execution providers the ONNX sessions run on (empty for the Haar cascade alone).
    providers: list[str] = Field(default_factory=list)


class FacesResult(BaseModel):
    faces: list[DetectedFace]
    frames: list[FrameFaces]
    face_count: int
    frames_with_faces: int
    model: ModelInfo
    #: Plain-language caveats about this result (no recognition model configured, detector limits).
    notes: list[str] = Field(default_factory=list)
