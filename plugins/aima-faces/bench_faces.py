"""Times the faces analyzer per keyframe: OpenCV's packaged Haar cascade, and the tiny test pack (which measures
insightface's own pre- and post-processing, alignment and crops, not a real SCRFD/ArcFace network's cost).

    .venv/bin/python plugins/aima-faces/bench_faces.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage import data

from aima.analysis import AnalysisOutput
from aima.testing.inputs import picture_input
from aima_faces.analyzer import FacesAnalyzer
from aima_faces.results import FacesResult
from aima_faces.settings import FaceSettings
from aima_faces.testing import build_tiny_pack


def pictures() -> dict[str, NDArray[np.uint8]]:
    astronaut = np.asarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]
    frame_720p = np.zeros((720, 1280, 3), dtype=np.uint8)
    frame_720p[:, 280:1000] = cv2.resize(astronaut, (720, 720), interpolation=cv2.INTER_CUBIC)
    squares = np.zeros((720, 1280, 3), dtype=np.uint8)
    for x in (128, 512, 896):
        squares[192:256, x : x + 64] = 255  # three faces for the tiny pack (64 px at 720p = one 32 px cell)
    return {
        "image 512x512 (astronaut)": astronaut,
        "720p keyframe (astronaut)": frame_720p,
        "720p keyframe (3 squares)": squares,
    }


def measure(analyzer: FacesAnalyzer, path: Path, repeat: int) -> tuple[int, float, float]:
    """Faces found, and the fastest and median of `repeat` runs in ms (the fastest is the least disturbed by other
    processes on a shared machine)."""
    item = picture_input(path)
    analyzer.analyze_blocking(item)  # loads the models, warms the sessions
    times = []
    faces = 0
    for _ in range(repeat):
        start = time.perf_counter()
        output = analyzer.analyze_blocking(item)
        times.append((time.perf_counter() - start) * 1000)
        assert isinstance(output, AnalysisOutput) and isinstance(output.result, FacesResult)
        faces = output.result.face_count
    return faces, min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pack = build_tiny_pack(root / "tiny")
        setups = {
            "haar (packaged, no pack)": FaceSettings(),
            "tiny pack (scrfd + arcface path)": FaceSettings(pack_dir=pack),
        }
        for name, rgb in pictures().items():
            path = root / f"{abs(hash(name))}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            for setup, settings in setups.items():
                faces, fastest, median = measure(FacesAnalyzer(settings), path, args.repeat)
                print(f"{setup:34} {name:28} faces={faces}  min {fastest:6.1f} ms  median {median:6.1f} ms")


if __name__ == "__main__":
    main()
