"""Face detectors behind one small interface: the pack's SCRFD/RetinaFace through insightface, or OpenCV's Haar cascade,
which ships inside opencv-python and so works with no model download at all."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import cv2.data
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]
FloatArray = NDArray[np.float32]

#: Of the frontal-face cascades in opencv-python, "alt" found the face in scikit-image's test pictures with no false
#: face in the others (20-odd pictures of cats, coins, text, textures, a retina); "default" and "alt2" each had some.
HAAR_CASCADE = "haarcascade_frontalface_alt.xml"


@dataclass(frozen=True)
class Detection:
    #: [x1, y1, x2, y2] in pixels of the image.
    box: FloatArray
    score: float
    #: (5, 2) points, or None when the detector gives none.
    landmarks: FloatArray | None


class FaceDetector(Protocol):
    kind: str
    file: str
    score_kind: Literal["probability", "haar-stage-weight"]

    def detect(self, image: Image) -> list[Detection]:
        """Faces in a BGR image."""
        ...


class ScrfdDetector:
    """A pack's SCRFD/RetinaFace model as insightface loaded it (decoding, multi-scale anchors and NMS are its own)."""

    kind = "scrfd"
    score_kind: Literal["probability", "haar-stage-weight"] = "probability"

    def __init__(self, model: Any) -> None:
        self._model = model
        self.file = Path(str(model.model_file)).name

    def detect(self, image: Image) -> list[Detection]:
        boxes, points = self._model.detect(image, max_num=0)
        detections = []
        for i in range(boxes.shape[0]):
            landmarks = None if points is None else np.asarray(points[i], dtype=np.float32)
            detections.append(Detection(np.asarray(boxes[i, :4], dtype=np.float32), float(boxes[i, 4]), landmarks))
        return detections


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on the frame scaled to fit `det_size` (larger frames only cost time)."""

    kind = "opencv-haar"
    file = HAAR_CASCADE
    score_kind: Literal["probability", "haar-stage-weight"] = "haar-stage-weight"

    def __init__(self, *, det_size: int, min_neighbors: int, min_face_px: int) -> None:
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's Haar cascade {path} could not be loaded")
        # A CascadeClassifier keeps scratch state while it detects: one thread at a time.
        self._lock = threading.Lock()
        self._det_size = det_size
        self._min_neighbors = min_neighbors
        self._min_face_px = min_face_px

    def detect(self, image: Image) -> list[Detection]:
        height, width = image.shape[:2]
        scale = min(1.0, self._det_size / max(height, width))
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        smallest = max(20, round(self._min_face_px * scale))
        with self._lock:
            rects, _levels, weights = self._cascade.detectMultiScale3(
                gray,
                scaleFactor=1.1,
                minNeighbors=self._min_neighbors,
                minSize=(smallest, smallest),
                outputRejectLevels=True,
            )
        detections = []
        for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).ravel(), strict=True):
            box = np.array([x, y, x + w, y + h], dtype=np.float32) / scale
            detections.append(Detection(box, float(weight), None))
        return detections
