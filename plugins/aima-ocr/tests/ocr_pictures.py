"""Pictures for the OCR plugin's tests: light text rendered on a dark background, and keyframes of such pictures as
a worker hands them to the analyzer."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from aima.analysis import AnalysisInput, Keyframe, MediaKind

#: Where a text is drawn (its top left corner) and the text.
Placed = tuple[tuple[int, int], str]


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans Bold where the machine has it, else Pillow's own scalable font."""
    found = sorted(glob.glob("/usr/share/fonts/**/DejaVuSans-Bold.ttf", recursive=True))
    return ImageFont.truetype(found[0], size) if found else ImageFont.load_default(size=size)


def render_texts(
    texts: Sequence[Placed], size: tuple[int, int] = (640, 360), font_size: int = 40
) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """Light text on a dark background, and each text's drawn bounding box (left, top, right, bottom)."""
    image = Image.new("RGB", size, (30, 34, 40))
    draw = ImageDraw.Draw(image)
    drawn_in = font(font_size)
    boxes = []
    for (x, y), text in texts:
        draw.text((x, y), text, font=drawn_in, fill=(250, 250, 240))
        boxes.append(tuple(float(v) for v in draw.textbbox((x, y), text, font=drawn_in)))
    return image, boxes  # type: ignore[return-value]


def keyframes_item(
    folder: Path, pictures: Sequence[Image.Image], times: Sequence[float], kind: MediaKind
) -> AnalysisInput:
    """Media item ``media-1`` whose keyframes are these pictures at these times, saved as JPEGs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    keyframes = []
    for n, (picture, timestamp) in enumerate(zip(pictures, times, strict=True)):
        path = folder / f"{n:05d}.jpg"
        picture.save(path, quality=92)
        keyframes.append(Keyframe(path, timestamp, n == 0, picture.width, picture.height))
    return AnalysisInput(
        media_id="media-1",
        case_id="case-1",
        kind=kind,
        content_type="video/mp4" if kind is MediaKind.VIDEO else "image/jpeg",
        size_bytes=1,
        sha256="0" * 64,
        original_path=keyframes[0].path,
        keyframes=keyframes,
    )
