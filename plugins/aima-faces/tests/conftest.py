"""Fixtures for the face plugin's tests: a tiny insightface pack built once, and keyframes written as JPEG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from faces_support import ItemFactory, KeyframeWriter
from numpy.typing import NDArray

from aima.analysis import AnalysisInput, Keyframe, MediaKind
from aima_faces.testing import build_tiny_pack


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pack(tmp_path_factory.mktemp("packs") / "tiny")


@pytest.fixture
def keyframe(tmp_path: Path) -> KeyframeWriter:
    """Writes an RGB picture as a keyframe JPEG (quality 100, so flat squares stay flat)."""
    count = 0

    def write(rgb: NDArray[np.uint8], timestamp_s: float = 0.0) -> Keyframe:
        nonlocal count
        path = tmp_path / f"keyframe-{count:03d}.jpg"
        count += 1
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
        height, width = rgb.shape[:2]
        return Keyframe(path, timestamp_s, scene_change=True, width=width, height=height)

    return write


@pytest.fixture
def item(tmp_path: Path) -> ItemFactory:
    def make(keyframes: Sequence[Keyframe]) -> AnalysisInput:
        kind = MediaKind.VIDEO if len(keyframes) > 1 else MediaKind.IMAGE
        return AnalysisInput(
            media_id="m1",
            case_id="c1",
            kind=kind,
            content_type="video/mp4" if kind is MediaKind.VIDEO else "image/jpeg",
            size_bytes=1,
            sha256="0" * 64,
            original_path=tmp_path / "original",
            keyframes=list(keyframes),
        )

    return make
