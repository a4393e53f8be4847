"""The ``faces`` analyzer: every face in an image or in each keyframe of a video, with a crop to look at and, when a
recognition model is installed, an identity embedding that the core groups into persons across the case."""

from __future__ import annotations

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    Embedding,
    LazyModel,
    MediaKind,
    Need,
    OutputFile,
)
from aima_faces.detectors import Detection, FloatArray, Image
from aima_faces.engine import EMBEDDING_DIM, FaceEngine, load_engine, require_pack
from aima_faces.imaging import clip_box, crop_jpeg, read_keyframe
from aima_faces.results import DetectedFace, FacesResult, FrameFaces, ModelInfo
from aima_faces.settings import FaceSettings

COLLECTION = "face_embeddings"

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
        item.report_progress(0.0, "loading face models")
        engine = self._engine.get()
        faces: list[DetectedFace] = []
        frames: list[FrameFaces] = []
        embeddings: list[Embedding] = []
        files: list[OutputFile] = []
        total = len(item.keyframes)
        for index, keyframe in enumerate(item.keyframes):
            image = read_keyframe(keyframe, index)
            height, width = image.shape[:2]
            found = self._faces_in(engine, image, width, height)
            vectors = engine.embed(image, found)
            for n, (detection, vector) in enumerate(zip(found, vectors, strict=True)):
                key = f"face-{index}-{n}"
                box = _rounded(detection.box)
                files.append(
                    OutputFile(
                        f"{key}.jpg",
                        crop_jpeg(image, detection.box, size=self.settings.crop_size, margin=self.settings.crop_margin),
                        "image/jpeg",
                    )
                )
                if vector is not None:
                    fields = {
                        "timestamp_s": keyframe.timestamp_s,
                        "keyframe": index,
                        "box": list(box),
                        "det_score": round(detection.score, 4),
                    }
                    embeddings.append(Embedding(COLLECTION, key, [float(v) for v in vector], fields))
                faces.append(
                    DetectedFace(
                        key=key,
                        keyframe=index,
                        timestamp_s=keyframe.timestamp_s,
                        box=box,
                        landmarks=None
                        if detection.landmarks is None
                        else [(round(float(x), 1), round(float(y), 1)) for x, y in detection.landmarks],
                        det_score=round(detection.score, 4),
                        crop=f"{key}.jpg",
                        has_embedding=vector is not None,
                        alignment=None
                        if engine.recognizer is None
                        else ("landmarks" if detection.landmarks is not None else "box"),
                    )
                )
            frames.append(
                FrameFaces(
                    keyframe=index,
                    timestamp_s=keyframe.timestamp_s,
                    width=width,
                    height=height,
                    scene_change=keyframe.scene_change,
                    faces=len(found),
                )
            )
            item.report_progress((index + 1) / total, f"keyframe {index + 1}/{total}: {len(found)} faces")
        result = FacesResult(
            faces=faces,
            frames=frames,
            face_count=len(faces),
            frames_with_faces=sum(1 for frame in frames if frame.faces),
            model=self._model_info(engine),
            notes=self._notes(engine),
        )
        return AnalysisOutput(result, embeddings=embeddings, files=files)

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


def _rounded(box: FloatArray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return (x1, y1, x2, y2)
