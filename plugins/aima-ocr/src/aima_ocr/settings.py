"""The plugin's settings: ``[plugins.ocr]`` in aima.toml or ``AIMA_PLUGINS__OCR__<KEY>``; the defaults work as is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aima.errors import InvalidInput

PLUGIN_NAME = "ocr"


class OcrSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Lines read with a lower recognition confidence (0 to 1) are dropped.
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Pictures whose longest side is larger are scaled down to it before detection (boxes are given in the
    #: keyframe's own pixels either way); smaller values are faster and miss small print.
    max_side: int = Field(default=2000, ge=64, le=8192)
    #: Text detection works on pictures whose shortest side is at least this (smaller ones are scaled up).
    detection_side: int = Field(default=736, ge=32, le=4096)
    #: Detected regions with a lower mean text probability are dropped.
    box_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: How far detected regions are grown around the text; larger keeps more of long, tightly set lines.
    unclip_ratio: float = Field(default=1.6, gt=0.0, le=5.0)
    #: Classify each line's orientation and turn upside-down text before recognition.
    use_angle_cls: bool = True
    #: Lines with fewer non-space characters are dropped (1 keeps everything).
    min_chars: int = Field(default=1, ge=1)
    #: Lines on consecutive keyframes whose texts (compared without case and spaces) are at least this similar
    #: (0 to 1, difflib's ratio) are one span; 1.0 joins identical texts only.
    span_similarity: float = Field(default=0.8, ge=0.0, le=1.0)
    #: ONNX Runtime threads per model; 0 lets it choose.
    threads: int = Field(default=0, ge=0)
    #: Other ONNX models than those in the rapidocr-onnxruntime package (e.g. a Latin-script recognition model);
    #: a recognition model whose file holds no character list needs `rec_keys_path`.
    det_model_path: Path | None = None
    rec_model_path: Path | None = None
    rec_keys_path: Path | None = None
    cls_model_path: Path | None = None


def ocr_settings(config: Mapping[str, Mapping[str, Any]]) -> OcrSettings:
    """The validated ``ocr`` table of the plugin configuration; bad values stop the worker with a clear message."""
    try:
        return OcrSettings.model_validate(dict(config.get(PLUGIN_NAME, {})))
    except ValidationError as exc:
        raise InvalidInput(f"Invalid settings for plugin {PLUGIN_NAME!r}: {exc}") from exc
