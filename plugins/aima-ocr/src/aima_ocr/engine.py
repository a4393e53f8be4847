"""RapidOCR behind a small typed interface: a BGR picture in, lines with boxes and confidences out."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aima.analysis import ModelNotInstalled
from aima_ocr.settings import OcrSettings

RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
INSTALL_HINT = "pip install rapidocr-onnxruntime==1.4.4"
#: The models the package ships, relative to its directory (its config.yaml names the same files).
PACKAGED_MODELS = {
    "det": "models/ch_PP-OCRv4_det_infer.onnx",
    "rec": "models/ch_PP-OCRv4_rec_infer.onnx",
    "cls": "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ReadLine:
    """A line as RapidOCR reads it, in the picture's pixels."""

    text: str
    box: tuple[tuple[float, float], ...]
    confidence: float


def packaged_model_dir() -> Path | None:
    """The rapidocr-onnxruntime package directory, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(RAPIDOCR_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def model_files(settings: OcrSettings) -> dict[str, Path]:
    """The ONNX files the engine will load (configured ones, else the packaged ones); raises when not installed."""
    package = packaged_model_dir()
    configured = {"det": settings.det_model_path, "rec": settings.rec_model_path, "cls": settings.cls_model_path}
    files: dict[str, Path] = {}
    for role, relative in PACKAGED_MODELS.items():
        path = configured[role]
        if path is None:
            if package is None:
                raise ModelNotInstalled(f"RapidOCR is not installed; install it with: {INSTALL_HINT}")
            path = package / relative
        files[role] = path
    if settings.rec_keys_path is not None:
        files["rec_keys"] = settings.rec_keys_path
    return files


def check_model_files(settings: OcrSettings) -> None:
    missing = [f"{role} ({path})" for role, path in model_files(settings).items() if not path.is_file()]
    if missing:
        raise ModelNotInstalled(
            f"RapidOCR model files are missing: {', '.join(missing)}; install it with: {INSTALL_HINT}"
            " (or fix the ocr plugin's *_model_path settings)"
        )


def engine_name() -> str:
    try:
        version = importlib.metadata.version("rapidocr-onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"rapidocr-onnxruntime {version}"


class OcrEngine:
    """One RapidOCR pipeline (detection, orientation, recognition: three ONNX Runtime sessions).

    Settings are fixed when it is made and never passed per call (RapidOCR stores per-call options on itself), so
    worker threads may share it: ONNX Runtime sessions run concurrently, and the one thing a call still stores (the
    detector's resize step) is the same for every picture when the detection side is a minimum, as here.
    """

    def __init__(self, settings: OcrSettings) -> None:
        from rapidocr_onnxruntime import RapidOCR  # imported here: registering the plugin must stay cheap

        files = model_files(settings)
        options: dict[str, Any] = {
            "text_score": settings.min_confidence,
            "use_cls": settings.use_angle_cls,
            "max_side_len": settings.max_side,
            "det_limit_side_len": settings.detection_side,
            "det_box_thresh": settings.box_threshold,
            "det_unclip_ratio": settings.unclip_ratio,
            "det_model_path": str(files["det"]),
            "rec_model_path": str(files["rec"]),
            "cls_model_path": str(files["cls"]),
            "intra_op_num_threads": settings.threads or -1,
        }
        if "rec_keys" in files:
            options["rec_keys_path"] = str(files["rec_keys"])
        self._ocr = RapidOCR(**options)

    def read(self, picture: Image) -> list[ReadLine]:
        """The lines in a BGR picture, in RapidOCR's reading order (top to bottom, then left to right)."""
        found, _timings = self._ocr(picture)
        if not found:
            return []
        lines = []
        for box, text, score in found:
            points = tuple((float(x), float(y)) for x, y in box)
            lines.append(ReadLine(text=str(text), box=points, confidence=float(score)))
        return lines
