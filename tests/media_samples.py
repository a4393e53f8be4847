"""Sample media with real content for the analyzers' end-to-end test: a face (scikit-image's astronaut photo, shipped in
its wheel), large printed text (DejaVu Sans Bold) and speech (espeak-ng), so that the real models have something to
find. `aima.testing.media` makes valid files quickly; these are for checking what the analyzers read from them."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
#: espeak-ng voice, pitch (0-99) and words per minute: the low male and high female voices that the speakers plugin's
#: tests show to be told apart.
Voice = tuple[str, int, int]
MALE: Voice = ("en-us+m3", 40, 150)
FEMALE: Voice = ("en+f4", 75, 175)
Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """A still shot: the astronaut's face on one side, `text` in black on a white board on the other."""

    text: str
    background: Rgb
    face_left: bool


@dataclass(frozen=True)
class Line:
    text: str
    voice: Voice


def espeak() -> str | None:
    return shutil.which("espeak-ng")


def astronaut() -> npt.NDArray[np.uint8]:
    """Eileen Collins' portrait, 512x512 RGB."""
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]


def astronaut_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(astronaut()).save(out, "JPEG", quality=90)
    return out.getvalue()


def speak(text: str, voice: Voice) -> tuple[npt.NDArray[np.int16], int]:
    """espeak-ng's speech as 16-bit mono samples and their rate."""
    name, pitch, speed = voice
    command = [espeak() or "espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(data)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return samples, wav.getframerate()


def dialogue(lines: Sequence[Line], *, pause_s: float = 1.2, lead_s: float = 0.5) -> tuple[npt.NDArray[np.int16], int]:
    """The lines spoken one after the other, with silence before, between and after them."""
    parts: list[npt.NDArray[np.int16]] = []
    rate = 0
    for line in lines:
        samples, rate = speak(line.text, line.voice)
        parts += [np.zeros(round((pause_s if parts else lead_s) * rate), np.int16), samples]
    parts.append(np.zeros(round(lead_s * rate), np.int16))
    return np.concatenate(parts), rate


def scene_picture(scene: Scene, width: int, height: int) -> npt.NDArray[np.uint8]:
    """The scene as an RGB frame: the face scaled to 80% of the height, the text board beside it."""
    canvas = Image.new("RGB", (width, height), scene.background)
    side = round(height * 0.8)
    face = Image.fromarray(astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    margin = (height - side) // 2
    face_x = margin if scene.face_left else width - side - margin
    canvas.paste(face, (face_x, margin))
    board_x0 = side + 2 * margin if scene.face_left else margin
    board_x1 = width - margin if scene.face_left else width - side - 2 * margin
    draw = ImageDraw.Draw(canvas)
    font = _fitting_font(draw, scene.text, board_x1 - board_x0 - 40)
    left, top, right, bottom = draw.textbbox((0, 0), scene.text, font=font)
    board_y0 = height // 2 - (bottom - top) // 2 - 30
    draw.rectangle((board_x0, board_y0, board_x1, board_y0 + (bottom - top) + 60), fill=(255, 255, 255))
    text_x = board_x0 + (board_x1 - board_x0 - (right - left)) // 2 - left
    draw.text((text_x, board_y0 + 30 - top), scene.text, font=font, fill=(0, 0, 0))
    return np.asarray(canvas, dtype=np.uint8)


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, width: int) -> ImageFont.FreeTypeFont:
    """The largest DejaVu Sans Bold (at most 72 px) in which `text` fits `width`."""
    size = 72
    while True:
        font = ImageFont.truetype(str(FONT), size)
        if draw.textlength(text, font=font) <= width or size <= 12:
            return font
        size -= 4


def make_video(
    scenes: Sequence[Scene], lines: Sequence[Line], *, width: int = 960, height: int = 540, fps: int = 5
) -> bytes:
    """MP4 (H.264 + AAC): the scenes in equal parts over the length of the spoken dialogue, a codec keyframe every
    second (so each scene change starts a group of pictures), the dialogue as the sound."""
    samples, rate = dialogue(lines)
    frame_count = -(-len(samples) * fps // rate)
    per_scene = -(-frame_count // len(scenes))
    per_scene += -per_scene % fps  # scene changes fall on codec keyframes
    pictures = [scene_picture(scene, width, height) for scene in scenes]
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(fps)})
        audio = container.add_stream("aac", rate=rate, layout="mono")
        assert isinstance(video, VideoStream) and isinstance(audio, AudioStream)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(frame_count):
            frame = av.VideoFrame.from_ndarray(pictures[min(index // per_scene, len(pictures) - 1)], format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024]
            aframe = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            aframe.sample_rate, aframe.pts = rate, start
            container.mux(audio.encode(aframe))
        container.mux(audio.encode(None))
    return out.getvalue()
