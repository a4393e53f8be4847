"""The plugin's settings (``[plugins.faces]`` in aima.toml, or ``AIMA_PLUGINS__FACES__<KEY>``), with defaults that work
without any model download: OpenCV's packaged Haar cascade finds faces, and embeddings come once a pack is set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aima.errors import AimaError

PLUGIN_NAME = "faces"


class FaceSettingsInvalid(AimaError):
    code = "PLUGIN_CONFIG_INVALID"


class FaceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: An insightface model pack directory (e.g. ``~/.insightface/models/buffalo_l``): a RetinaFace/SCRFD detector
    #: ONNX and an ArcFace recognition ONNX. Unset: detection only, with the packaged detector, and no embeddings.
    pack_dir: Path | None = None
    #: "pack": the pack's SCRFD/RetinaFace (boxes, five landmarks, probabilities); "haar": OpenCV's frontal-face Haar
    #: cascade shipped in opencv-python (boxes only); "auto": the pack's detector when a pack is set, else Haar.
    detector: Literal["auto", "pack", "haar"] = "auto"
    #: Side of the square the detector sees (the frame is scaled to fit it); a multiple of 32.
    det_size: int = Field(default=640, ge=128, le=2048, multiple_of=32)
    #: Minimum face probability for the pack's detector (0-1).
    det_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: Neighbouring detections the Haar cascade needs to accept a face (higher: fewer false faces, fewer faces).
    haar_min_neighbors: int = Field(default=5, ge=1, le=50)
    #: Faces whose box is narrower or lower than this, in keyframe pixels, are dropped (too small to recognise).
    min_face_px: int = Field(default=20, ge=8)
    #: ONNX Runtime execution providers, in order of preference.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: Side of the square JPEG crop stored for each face, and the margin around the box as a fraction of its size.
    crop_size: int = Field(default=160, ge=32, le=1024)
    crop_margin: float = Field(default=0.3, ge=0.0, le=2.0)

    @field_validator("pack_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("providers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # Environment variables arrive as one string: "CUDAExecutionProvider,CPUExecutionProvider".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _pack_for_pack_detector(self) -> FaceSettings:
        if self.detector == "pack" and self.pack_dir is None:
            raise ValueError('detector "pack" needs pack_dir (an insightface model pack directory)')
        if not self.providers:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        return self

    @property
    def uses_pack_detector(self) -> bool:
        return self.detector == "pack" or (self.detector == "auto" and self.pack_dir is not None)


def load_settings(config: Mapping[str, Mapping[str, Any]]) -> FaceSettings:
    """This plugin's settings from every plugin's settings; a user error names the bad key."""
    try:
        return FaceSettings.model_validate(dict(config.get(PLUGIN_NAME, {})))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'faces'}: {error['msg']}" for error in exc.errors()
        )
        raise FaceSettingsInvalid(f"Invalid [plugins.{PLUGIN_NAME}] settings: {problems}") from None
