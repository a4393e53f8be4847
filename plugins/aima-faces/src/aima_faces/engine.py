"""Loading the models once: the configured insightface pack (never downloaded: insightface is only ever handed an
existing directory) and the chosen detector, plus embedding faces with the pack's ArcFace model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aima.analysis import ModelNotInstalled
from aima.errors import AimaError
from aima_faces.detectors import Detection, FaceDetector, FloatArray, HaarDetector, Image, ScrfdDetector
from aima_faces.imaging import box_landmarks
from aima_faces.settings import FaceSettings

logger = logging.getLogger(__name__)

#: The dimension of the ``face_embeddings`` collection.
EMBEDDING_DIM = 512
MANIFEST = "manifest.json"


class FacePackInvalid(AimaError):
    """The configured pack exists but insightface cannot use it (a truncated file, no detector, wrong dimension)."""

    code = "FACE_PACK_INVALID"


def pack_problem(pack_dir: Path) -> str | None:
    """What is missing from a pack directory, by looking at files only (no model is loaded)."""
    if not pack_dir.is_dir():
        return f"the face model pack directory {pack_dir} does not exist"
    if (pack_dir / MANIFEST).is_file():
        return None
    models = sorted(pack_dir.glob("*.onnx"))
    if not models:
        return f"the face model pack directory {pack_dir} holds no .onnx model"
    empty = [p.name for p in models if p.stat().st_size == 0]
    if empty:
        return f"the face model pack directory {pack_dir} has empty model files: {', '.join(empty)}"
    if len(models) < 2:
        return (
            f"the face model pack directory {pack_dir} holds only {models[0].name}; a pack needs a detector "
            "(SCRFD/RetinaFace) and a recognition (ArcFace) model"
        )
    return None


def install_hint(pack_dir: Path) -> str:
    root = pack_dir.parent.parent if pack_dir.parent.name == "models" else Path("~/.insightface")
    name = pack_dir.name if pack_dir.parent.name == "models" else "buffalo_l"
    where = "" if pack_dir.parent.name == "models" else f" and set pack_dir to {root}/models/{name}"
    return (
        f"insightface-cli model.download {name} --root {root}{where} (insightface's packs are for non-commercial "
        "research only: see the aima-faces README for licences and alternatives)"
    )


def require_pack(pack_dir: Path) -> None:
    problem = pack_problem(pack_dir)
    if problem is not None:
        raise ModelNotInstalled(f"{problem}; install it with: {install_hint(pack_dir)}")


@dataclass(frozen=True)
class FaceEngine:
    detector: FaceDetector
    #: insightface's ArcFaceONNX, or None without a pack.
    recognizer: Any
    recognizer_file: str | None
    pack: str | None
    providers: tuple[str, ...]

    def embed(self, image: Image, detections: Sequence[Detection]) -> list[FloatArray | None]:
        """Unit-length identity vectors, one per detection, aligned on its landmarks (or on its box without them)."""
        if self.recognizer is None or not detections:
            return [None] * len(detections)
        from insightface.utils import face_align

        size = int(self.recognizer.input_size[0])
        crops = [face_align.norm_crop(image, landmark=_points(d), image_size=size) for d in detections]
        features = np.asarray(self.recognizer.get_feat(crops), dtype=np.float32).reshape(len(crops), -1)
        vectors: list[FloatArray | None] = []
        for feature in features:
            norm = float(np.linalg.norm(feature))
            vectors.append(feature / norm if norm > 0 and np.isfinite(norm) else None)
        return vectors


def _points(detection: Detection) -> FloatArray:
    return detection.landmarks if detection.landmarks is not None else box_landmarks(detection.box)


def load_engine(settings: FaceSettings) -> FaceEngine:
    """The detector and recogniser the settings ask for; slow (reads the models), so called once, lazily."""
    if settings.pack_dir is None:
        return FaceEngine(_haar(settings), None, None, None, ())
    pack_dir = settings.pack_dir.resolve()
    problem = pack_problem(pack_dir)
    if problem is not None:
        raise FacePackInvalid(
            f"Face recognition is not installed: {problem}. Install it with: {install_hint(pack_dir)}"
        )
    app = _face_analysis(pack_dir, settings)
    recognizer = app.models.get("recognition")
    if recognizer is not None:
        _check_dimension(recognizer, pack_dir)
    detector: FaceDetector = ScrfdDetector(app.det_model) if settings.uses_pack_detector else _haar(settings)
    providers = tuple(str(p) for p in app.det_model.session.get_providers())
    recognizer_file = Path(str(recognizer.model_file)).name if recognizer is not None else None
    logger.info(
        "face models loaded from %s: detector %s, recogniser %s, providers %s",
        pack_dir,
        detector.file,
        recognizer_file,
        ",".join(providers),
    )
    return FaceEngine(detector, recognizer, recognizer_file, pack_dir.name, providers)


def _haar(settings: FaceSettings) -> HaarDetector:
    return HaarDetector(
        det_size=settings.det_size, min_neighbors=settings.haar_min_neighbors, min_face_px=settings.min_face_px
    )


def _face_analysis(pack_dir: Path, settings: FaceSettings) -> Any:
    # Imported here: insightface pulls in ONNX Runtime and more, which only the process that analyses needs.
    from insightface.app import FaceAnalysis

    try:
        # An existing directory as `name` is used as it is: insightface downloads only names it cannot find.
        app = FaceAnalysis(
            name=str(pack_dir),
            root=str(pack_dir.parent),
            allowed_modules=["detection", "recognition"],
            providers=list(settings.providers),
        )
        app.prepare(ctx_id=0, det_thresh=settings.det_threshold, det_size=(settings.det_size, settings.det_size))
    except AssertionError:
        raise FacePackInvalid(
            f"The face model pack {pack_dir} has no face detector (SCRFD/RetinaFace ONNX) that insightface recognises."
        ) from None
    except Exception as exc:
        raise FacePackInvalid(f"The face model pack {pack_dir} could not be loaded: {exc}") from exc
    return app


def _check_dimension(recognizer: Any, pack_dir: Path) -> None:
    size = int(recognizer.input_size[0])
    probe = np.zeros((size, size, 3), dtype=np.uint8)
    dim = int(np.asarray(recognizer.get_feat([probe])).reshape(1, -1).shape[1])
    if dim != EMBEDDING_DIM:
        raise FacePackInvalid(
            f"The recognition model {Path(str(recognizer.model_file)).name} in {pack_dir} gives {dim}-d vectors; "
            f"face embeddings are stored with {EMBEDDING_DIM} dimensions (an ArcFace model such as w600k_r50)."
        )
