"""What analyzers are handed, made by hand for the tests and benchmarks of analyzer plugins: a picture as the media
item it is, and an audio file decoded to the track a worker prepares (16-bit mono)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from av.audio.resampler import AudioResampler
from PIL import Image

from aima.analysis import AnalysisInput, Keyframe, MediaKind


def picture_input(path: Path) -> AnalysisInput:
    """A JPEG picture as a worker hands it over: the picture is its own single keyframe."""
    with Image.open(path) as image:
        width, height = image.size
    return AnalysisInput(
        media_id="media-1",
        case_id="case-1",
        kind=MediaKind.IMAGE,
        content_type="image/jpeg",
        size_bytes=path.stat().st_size,
        sha256="0" * 64,
        original_path=path,
        keyframes=[Keyframe(path, 0.0, scene_change=True, width=width, height=height)],
    )


def mono_samples(path: Path, rate: int = 16_000) -> npt.NDArray[np.int16]:
    """The audio file's samples, resampled with PyAV to 16-bit mono at `rate` (the worker's track is 16 kHz)."""
    resampler = AudioResampler(format="s16", layout="mono", rate=rate)
    chunks: list[npt.NDArray[np.generic]] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(chunks).astype(np.int16)
