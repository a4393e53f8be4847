"""The ``faces`` analyzer: every face in an image or in each keyframe of a video, with a crop to look at and, when a
recognition model is installed, an identity embedding that the core groups into persons across the case."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    Embedding,
    EvidenceItem,
    Keyframe,
    LazyModel,
    MediaKind,
    Need,
    OutputFile,
    stored_items,
)
from aima_faces.detectors import Detection, FloatArray, Image
from aima_faces.engine import EMBEDDING_DIM, FaceEngine, load_engine, require_pack
from aima_faces.imaging import clip_box, crop_jpeg, read_keyframe
from aima_faces.results import DetectedFace, FacesResult, FrameFaces, ModelInfo
from aima_faces.settings import FaceSettings

logger = logging.getLogger(__name__)

COLLECTION = "face_embeddings"
#: What `evidence` reads of a stored result: the faces, so that a result with older model information still offers
#: them.
_FACES = TypeAdapter(list[DetectedFace])

NO_RECOGNIZER_NOTE = (
    "No face recognition model is configured ([plugins.faces] pack_dir): faces are found and cropped but carry no "
    "embeddings, so they are not grouped into persons."
)
HAAR_NOTE = (
    "Faces were found with OpenCV's Haar cascade: upright frontal faces only; it misses profiles, tilted, small or "
    "partly hidden faces, gives no landmarks, and its det_score is a stage weight, not a probability. A pack's "
    'detector (detector = "pack") finds far more.'
)
BOX_ALIGNMENT_NOTE = (
    "Embeddings of Haar faces are aligned on a template placed in the box, not on landmarks, and match less "
    "reliably than faces from the pack's detector."
)


class FacesAnalyzer(BlockingAnalyzer):
    name = "faces"
    version = "1.0.0"
    description = (
        "Faces in images and video keyframes: boxes, five landmarks, detection scores, JPEG crops and 512-d ArcFace "
        "identity embeddings (insightface model pack), grouped into persons per case."
    )
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    needs = frozenset({Need.KEYFRAMES})
    runs_on = "cpu"
    result_model = FacesResult

    def __init__(self, settings: FaceSettings) -> None:
        self.settings = settings
        self._engine: LazyModel[FaceEngine] = LazyModel(lambda: load_engine(settings))

    def check(self) -> None:
        if self.settings.pack_dir is not None:
            require_pack(self.settings.pack_dir)

    def analyze_blocking(self, item: AnalysisInput) -> AnalysisOutput:
        item.report_progress(0.0, "detecting faces")
        engine = self._engine.get()
        found = _Found()
        total = len(item.keyframes)
        for index, keyframe in enumerate(item.keyframes):
            faces = self._keyframe(engine, index, keyframe, found)
            item.report_progress((index + 1) / total, f"keyframe {index + 1}/{total}: {faces} faces")
        result = FacesResult(
            faces=found.faces,
            frames=found.frames,
            face_count=len(found.faces),
            frames_with_faces=sum(1 for frame in found.frames if frame.faces),
            model=self._model_info(engine),
            notes=self._notes(engine),
        )
        return AnalysisOutput(result, embeddings=found.embeddings, files=found.files)

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """Each face, under the key of its embedding and crop: the key a person cluster's members and a dossier's
        citations use. A picture's faces (one keyframe, at 0 s) carry no time. The detection score is the
        confidence only where it is a probability (not the Haar cascade's stage weight). A stored result whose
        faces have another shape offers none (it is cited whole)."""
        faces = stored_items(_FACES, payload, "faces", media_id=media_id, what="faces result")
        if faces is None:
            return []
        frames = payload.get("frames")
        picture = isinstance(frames, list) and len(frames) == 1 and all(f.timestamp_s == 0 for f in faces)
        model = payload.get("model")
        probability = isinstance(model, Mapping) and model.get("det_score_kind") == "probability"
        return [
            EvidenceItem(
                media_id=media_id,
                analyzer=self.name,
                key=face.key,
                kind="face",
                summary=summary,
                start_s=None if picture else face.timestamp_s,
                end_s=None if picture else face.timestamp_s,
                keyframe=face.keyframe,
                box=list(face.box),
                confidence=face.det_score if probability else None,
            )
            for face, summary in zip(faces, _summaries(faces, picture=picture), strict=True)
        ]

    def _keyframe(self, engine: FaceEngine, index: int, keyframe: Keyframe, found: _Found) -> int:
        """Adds one keyframe's faces, crops and embeddings to `found`; returns how many faces it holds."""
        image = read_keyframe(keyframe, index)
        height, width = image.shape[:2]
        detections = self._faces_in(engine, image, width, height)
        vectors = engine.embed(image, detections)
        for n, (detection, vector) in enumerate(zip(detections, vectors, strict=True)):
            key = f"face-{index}-{n}"
            box = _rounded(detection.box)
            score = round(detection.score, 4)
            crop = crop_jpeg(image, detection.box, size=self.settings.crop_size, margin=self.settings.crop_margin)
            found.files.append(OutputFile(f"{key}.jpg", crop, "image/jpeg"))
            if vector is not None:
                fields = {"timestamp_s": keyframe.timestamp_s, "keyframe": index, "box": list(box), "det_score": score}
                found.embeddings.append(Embedding(COLLECTION, key, [float(v) for v in vector], fields))
            found.faces.append(
                DetectedFace(
                    key=key,
                    keyframe=index,
                    timestamp_s=keyframe.timestamp_s,
                    box=box,
                    landmarks=_points(detection.landmarks),
                    det_score=score,
                    crop=f"{key}.jpg",
                    has_embedding=vector is not None,
                    alignment=_alignment(engine, detection),
                )
            )
        found.frames.append(
            FrameFaces(
                keyframe=index,
                timestamp_s=keyframe.timestamp_s,
                width=width,
                height=height,
                scene_change=keyframe.scene_change,
                faces=len(detections),
            )
        )
        return len(detections)

    def _faces_in(self, engine: FaceEngine, image: Image, width: int, height: int) -> list[Detection]:
        """The detector's faces large enough to keep, clipped to the frame, from left to right (stable keys)."""
        kept = []
        for detection in engine.detector.detect(image):
            box = clip_box(detection.box, width, height)
            if min(box[2] - box[0], box[3] - box[1]) >= self.settings.min_face_px:
                kept.append(Detection(box, detection.score, detection.landmarks))
        kept.sort(key=lambda d: (float(d.box[0]), float(d.box[1]), -d.score))
        return kept

    def _model_info(self, engine: FaceEngine) -> ModelInfo:
        return ModelInfo(
            detector=engine.detector.kind,
            detector_file=engine.detector.file,
            det_score_kind=engine.detector.score_kind,
            recognizer_file=engine.recognizer_file,
            embedding_dim=EMBEDDING_DIM if engine.recognizer is not None else None,
            pack=engine.pack,
            det_size=self.settings.det_size,
            det_threshold=self.settings.det_threshold if engine.detector.score_kind == "probability" else None,
            min_face_px=self.settings.min_face_px,
            providers=list(engine.providers),
        )

    def _notes(self, engine: FaceEngine) -> list[str]:
        notes = []
        if engine.recognizer is None:
            notes.append(NO_RECOGNIZER_NOTE)
        if engine.detector.score_kind == "haar-stage-weight":
            notes.append(HAAR_NOTE)
            if engine.recognizer is not None:
                notes.append(BOX_ALIGNMENT_NOTE)
        return notes


@dataclass
class _Found:
    faces: list[DetectedFace] = field(default_factory=list)
    frames: list[FrameFaces] = field(default_factory=list)
    embeddings: list[Embedding] = field(default_factory=list)
    files: list[OutputFile] = field(default_factory=list)


def _summaries(faces: list[DetectedFace], *, picture: bool) -> list[str]:
    """ "face 2 of 3 at 00:12 (keyframe 3)" (a keyframe's faces counted from left to right, as their keys are), or
    "face in the picture"."""
    per_keyframe = Counter(face.keyframe for face in faces)
    seen: Counter[int] = Counter()
    summaries = []
    for face in faces:
        seen[face.keyframe] += 1
        total = per_keyframe[face.keyframe]
        which = f"face {seen[face.keyframe]} of {total}" if total > 1 else "face"
        where = "in the picture" if picture else f"at {_clock(face.timestamp_s)} (keyframe {face.keyframe})"
        summaries.append(f"{which} {where}")
    return summaries


def _clock(seconds: float) -> str:
    """Media time as a player shows it: 00:12, or 1:02:03 past an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _points(landmarks: FloatArray | None) -> list[tuple[float, float]] | None:
    return None if landmarks is None else [(round(float(x), 1), round(float(y), 1)) for x, y in landmarks]


def _alignment(engine: FaceEngine, detection: Detection) -> Literal["landmarks", "box"] | None:
    if engine.recognizer is None:
        return None
    return "landmarks" if detection.landmarks is not None else "box"


def _rounded(box: FloatArray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return (x1, y1, x2, y2)
