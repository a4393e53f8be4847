"""Helpers of the vision plugin's tests: endpoints on the test model server, keyframes, media items, descriptions."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from aima.analysis import AnalysisInput, Keyframe, MediaKind
from aima.inference import Endpoints, endpoints_for
from aima.settings import InferenceSettings
from aima.testing.model_server import RecordedRequest, endpoint_settings

MODEL = "llava-hf/llava-v1.6-34b-hf"
_names = itertools.count()


def make_endpoints(url: str, protocol: str, *, name: str | None = None, **settings: Any) -> Endpoints:
    """Endpoints with one endpoint, the vision endpoint, under a fresh name unless given; retries are fast."""
    endpoint = name or f"llava-{protocol}-{next(_names)}"
    values = endpoint_settings(url, protocol, MODEL, settings)
    return endpoints_for(InferenceSettings(endpoints={endpoint: values}, vision_endpoint=endpoint))


def jpeg(seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    """A small JPEG whose bytes differ by seed, so that a test can tell which keyframe reached the server."""
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def keyframes(folder: Path, timestamps: list[float]) -> list[Keyframe]:
    frames = []
    for index, timestamp in enumerate(timestamps):
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(jpeg(index))
        frames.append(Keyframe(path=path, timestamp_s=timestamp, scene_change=True, width=32, height=24))
    return frames


def media(
    kind: MediaKind,
    frames: list[Keyframe],
    endpoints: Endpoints | None,
    progress: list[tuple[float, str]] | None = None,
) -> AnalysisInput:
    sink = progress if progress is not None else []
    return AnalysisInput(
        media_id="m-1",
        case_id="c-1",
        kind=kind,
        content_type="video/mp4" if kind is MediaKind.VIDEO else "image/jpeg",
        size_bytes=1000,
        sha256="0" * 64,
        original_path=frames[0].path if frames else Path("/nonexistent"),
        report_progress=lambda fraction, message: sink.append((fraction, message)),
        keyframes=frames,
        inference=endpoints,
    )


def description(
    scene: str = "A street at night.",
    *,
    people: int = 0,
    confidence: float = 0.9,
    notable: Sequence[Mapping[str, Any]] = (),
    visible_text: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A FrameDescription as the model would answer it."""
    return {
        "scene": scene,
        "setting": "outdoor, city street, night",
        "objects": [{"name": "car", "count": 2, "position": "left background", "confidence": 0.8}],
        "people": {
            "count": people,
            "persons": [
                {"appearance": "adult in a dark jacket", "actions": "walking", "position": "centre", "confidence": 0.7}
            ][: min(people, 1)],
        },
        "visible_text": [dict(v) for v in visible_text],
        "notable": [dict(n) for n in notable],
        "confidence": confidence,
    }


def frame_index(record: RecordedRequest) -> int:
    """Which keyframe a request carries (the images of `keyframes` are `jpeg(index)`)."""
    [image] = record.images
    return next(i for i in range(1000) if jpeg(i) == image.data)
