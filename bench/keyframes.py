"""Keyframes benchmark: `aima.media.derive.keyframes` on a 60 s 1280x720 H.264 clip, on one core.

The clip is made first with PyAV (30 fps, a keyframe every 2 s, x264 "veryfast" with its own scene-cut detection,
six scenes of a textured picture panning, each with its own colours), then timed with the process pinned to one
CPU. The issue's target: under 3 s.

Run: .venv/bin/python bench/keyframes.py [--seconds 60] [--repeat 3] [--clip PATH (made when missing)]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.media.derive import KeyframeStats, keyframes
from aima.media.sniff import sniff_file

WIDTH, HEIGHT, FPS, GOP_S = 1280, 720, 30, 2
SCENE_PALETTES = [
    ("navy", "orange"),
    ("darkgreen", "lightyellow"),
    ("black", "white"),
    ("purple", "lightblue"),
    ("brown", "pink"),
    ("darkslategray", "gold"),
]


def scene_texture(index: int) -> Image.Image:
    """A detailed picture bigger than the frame, so that panning over it gives motion and real coding cost."""
    size = (WIDTH + 400, HEIGHT + 200)
    detail = Image.effect_mandelbrot(size, (-2.0 + 0.1 * index, -1.0, 1.0, 1.0 + 0.05 * index), 60)
    noise = Image.effect_noise(size, 40).filter(ImageFilter.GaussianBlur(1.5))
    grey = Image.blend(detail, noise, 0.35)
    dark, light = SCENE_PALETTES[index % len(SCENE_PALETTES)]
    return ImageOps.colorize(grey, dark, light)


def make_clip(path: Path, seconds: int) -> None:
    frames = seconds * FPS
    scene_frames = max(1, frames // len(SCENE_PALETTES))
    options = {"preset": "veryfast", "x264-params": f"keyint={GOP_S * FPS}"}
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        texture = scene_texture(0)
        for i in range(frames):
            if i % scene_frames == 0:
                texture = scene_texture(i // scene_frames)
            step = i % scene_frames
            x, y = (step * 2) % 400, (step // 2) % 200
            frame = VideoFrame.from_image(texture.crop((x, y, x + WIDTH, y + HEIGHT))).reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def pin_to_one_cpu() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity here)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clip", type=Path, default=None, help="reuse this clip; made there when missing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aima-bench-keyframes-") as scratch:
        clip = args.clip or Path(scratch) / "clip.mp4"
        if not clip.exists():
            started = time.perf_counter()
            make_clip(clip, args.seconds)
            print(f"made {clip.name}: {clip.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            codec_keyframes = sum(1 for e in stream.index_entries if e.is_keyframe)
            frames = len(stream.index_entries)
        print(f"clip: {WIDTH}x{HEIGHT} H.264, {frames} frames, {codec_keyframes} codec keyframes")
        print(pin_to_one_cpu())
        sniffed = sniff_file(clip)
        times = []
        for _ in range(max(1, args.repeat)):
            stats = KeyframeStats()
            started = time.perf_counter()
            kept = list(keyframes(clip, sniffed, stats=stats))
            times.append(time.perf_counter() - started)
        scenes = sum(1 for f in kept if f.scene_change)
        size = sum(len(f.jpeg) for f in kept)
        print(
            f"keyframes: {min(times):.3f} s (median {statistics.median(times):.3f} s of {len(times)}), "
            f"{stats.frames_decoded} frames decoded, {stats.kept} kept ({scenes} scene changes), "
            f"{size / 1e6:.1f} MB of JPEG"
        )
        print(f"target < 3 s: {'met' if min(times) < 3.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
