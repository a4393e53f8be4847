"""Derived files, made from a local copy of an original: previews, keyframes and the audio track.

Pure functions on local files; storing what they make is `aima.services.artifacts`' job. Every PyAV open goes
through `open_container`, so a crafted file cannot make ffmpeg read anything but itself.

- `thumbnail`: a JPEG of a still image, longest side 512, upright (EXIF orientation applied; HEIF decoded with PyAV,
  its rotation from the container's display matrix).
- `poster_frame`: a JPEG of a representative video frame: the first codec keyframe from a tenth of the way in (at
  most 5 s) that is not nearly uniform (a black or faded frame), looking at no more than a few keyframes.
- `keyframes`: frames for analyzers. Only codec keyframes are decoded (the demuxer drops the other packets and the
  decoder is told to skip them), except inside a group of pictures longer than `max_gap_s`, which is decoded in full
  so it can be sampled at a fixed rate. Among the candidates, a frame is kept when it differs enough from the last
  kept one (a scene change) or when `max_gap_s` passed without one.
- `audio_track`: the first audio stream as 16 kHz mono 16-bit PCM WAV, written while decoding (constant memory).

Decoder failures become `CorruptMedia` with a path-free reason.
"""

from __future__ import annotations

import bisect
import io
import logging
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.container import InputContainer
from av.stream import Discard, Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image, ImageChops, ImageOps, ImageStat

from aima.errors import AimaError, CorruptMedia, UnsupportedMedia
from aima.media.probe import DEFAULT_MAX_PIXELS, open_container
from aima.media.sniff import SniffedType

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 512
POSTER_SIDE = 1280
KEYFRAME_SIDE = 1280
JPEG_QUALITY = 85
AUDIO_SAMPLE_RATE = 16_000
#: Defaults of `keyframes`.
MAX_KEYFRAMES = 200
MIN_INTERVAL_S = 1.0
SCENE_THRESHOLD = 0.15
MAX_GAP_S = 10.0
#: Leading silence added to the audio track so that its time 0 is the media's, when the audio starts late.
MAX_LEAD_S = 30.0

_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF"}
_HEIF_FORMATS = frozenset({"heic", "heif"})
_NOT_REAL_VIDEO = Disposition.attached_pic | Disposition.timed_thumbnails | Disposition.still_image
#: Size of the grey picture a frame is compared by (aspect ratio ignored: only differences matter).
_SIGNATURE_SIZE = (64, 36)
#: A poster candidate whose grey levels spread less than this (standard deviation, 0..255) is nearly uniform.
_UNIFORM_STDDEV = 12.0
_POSTER_CANDIDATES = 5
_MAX_DECODE_ERRORS = 50

_AV_ERRORS: tuple[type[Exception], ...] = (av.FFmpegError, OSError, EOFError, ValueError, IndexError)
_PILLOW_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError)


@dataclass(frozen=True)
class DerivedFrame:
    """One picture chosen from a video (or the image itself), as JPEG."""

    jpeg: bytes
    #: Seconds from the start of the media.
    timestamp_s: float
    #: Whether it was kept because it differs from the previous kept frame (the first frame counts as one).
    scene_change: bool
    width: int
    height: int
    #: How much it differs from the previous kept frame, 0 (same) to 1; None for the first.
    score: float | None = None
    #: Whether it is a codec keyframe (False: decoded to sample a long group of pictures).
    codec_keyframe: bool = True


@dataclass
class KeyframeStats:
    """What `keyframes` decoded, for tests, logs and benchmarks."""

    #: Every frame the decoder returned.
    frames_decoded: int = 0
    #: Of those, codec keyframes.
    keyframes_decoded: int = 0
    #: Groups of pictures longer than `max_gap_s` that were decoded in full.
    dense_groups: int = 0
    kept: int = 0
    duration_s: float | None = None


@dataclass(frozen=True)
class AudioTrackInfo:
    sample_rate: int
    channels: int
    samples: int
    duration_s: float
    #: Silence put in front so that the track starts with the media (its audio began this late).
    lead_s: float
    source_codec: str | None
    source_sample_rate: int | None
    source_channels: int | None


# --- still images ----------------------------------------------------------------------------------


def thumbnail(path: Path, sniffed: SniffedType, *, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG preview of a still image: longest side at most `max_side`, upright, without metadata."""
    image = _still_image(path, sniffed, max_side)
    return _jpeg(image)


def _still_image(path: Path, sniffed: SniffedType, max_side: int) -> Image.Image:
    """The image, upright, in RGB, scaled down to fit `max_side` (first frame of an animation)."""
    if sniffed.format in _HEIF_FORMATS:
        image = _heif_image(path, sniffed)
    elif sniffed.format in _PILLOW_FORMAT:
        image = _pillow_image(path, sniffed, max_side)
    else:
        raise UnsupportedMedia(f"No preview can be made of {sniffed.format} files.")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def _pillow_image(path: Path, sniffed: SniffedType, max_side: int) -> Image.Image:
    try:
        with Image.open(path, formats=[_PILLOW_FORMAT[sniffed.format]]) as im:
            if im.width * im.height > DEFAULT_MAX_PIXELS:
                raise UnsupportedMedia(f"The image is too large to decode safely ({im.width}x{im.height}).")
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (max_side, max_side))  # decode at the smallest DCT scale that is still big enough
            im.seek(0)
            im.load()
            upright = ImageOps.exif_transpose(im)
            return _rgb(upright)
    except Image.DecompressionBombError as exc:
        raise UnsupportedMedia(f"The image is too large to decode safely: {exc}") from exc
    except _PILLOW_ERRORS as exc:
        raise CorruptMedia(f"The image could not be decoded: {_reason(exc, path)}") from exc


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency laid on white and 16-bit and float pictures brought to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _heif_image(path: Path, sniffed: SniffedType) -> Image.Image:
    """The coded image of a HEIF file (its first tile when it is a grid), turned upright by its display matrix."""
    try:
        with open_container(path, sniffed) as container:
            streams = list(container.streams.video)
            if not streams:
                raise CorruptMedia("The HEIF image holds no coded image.")
            for packet in container.demux(streams[0]):
                for frame in _decode(packet):
                    if isinstance(frame, VideoFrame):
                        return _upright(_to_image(frame), frame)
            for frame in _decode(None, streams[0]):
                if isinstance(frame, VideoFrame):
                    return _upright(_to_image(frame), frame)
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"The HEIF image could not be decoded: {_reason(exc, path)}") from exc
    raise CorruptMedia("The HEIF image could not be decoded: its image data does not decode.")


# --- video -----------------------------------------------------------------------------------------


def poster_frame(path: Path, sniffed: SniffedType, *, max_side: int = POSTER_SIDE) -> DerivedFrame:
    """A representative frame of a video, decoded from codec keyframes only."""
    try:
        with open_container(path, sniffed) as container:
            stream = _main_video(container)
            origin = _origin(container)
            duration = _duration_s(container, stream)
            target = min(duration * 0.1, 5.0) if duration else 0.0
            _keyframes_only(stream)
            chosen = _pick_poster(container, stream, origin, target)
            if chosen is None and target > 0:  # the seek found nothing: from the start
                chosen = _pick_poster(container, stream, origin, 0.0)
            if chosen is None:
                raise CorruptMedia("The video could not be decoded: no keyframe decodes.")
            frame, time_s = chosen
            image = _frame_image(frame, max_side)
            return DerivedFrame(_jpeg(image), round(time_s, 3), True, image.width, image.height)
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"The video could not be decoded: {_reason(exc, path)}") from exc


def _pick_poster(
    container: InputContainer, stream: VideoStream, origin: float, target_s: float
) -> tuple[VideoFrame, float] | None:
    """The first of a few keyframes from `target_s` on that is not nearly uniform, else the least uniform one."""
    if target_s > 0 and stream.time_base is not None:
        try:
            container.seek(int((target_s + origin) / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0)
    else:
        container.seek(0)
    best: tuple[float, VideoFrame, float] | None = None
    for seen, frame in enumerate(_video_frames(container, stream), start=1):
        spread = ImageStat.Stat(_signature(frame)).stddev[0]
        time_s = _time_s(frame, origin)
        if spread >= _UNIFORM_STDDEV:
            return frame, time_s
        if best is None or spread > best[0]:
            best = (spread, frame, time_s)
        if seen >= _POSTER_CANDIDATES:
            break
    return (best[1], best[2]) if best is not None else None


def keyframes(
    path: Path,
    sniffed: SniffedType,
    *,
    max_frames: int = MAX_KEYFRAMES,
    min_interval_s: float = MIN_INTERVAL_S,
    scene_threshold: float = SCENE_THRESHOLD,
    max_gap_s: float = MAX_GAP_S,
    max_side: int = KEYFRAME_SIDE,
    stats: KeyframeStats | None = None,
) -> Iterator[DerivedFrame]:
    """Frames of a video worth analysing, in time order, as JPEG (longest side at most `max_side`).

    Candidates are the codec keyframes; in a group of pictures longer than `max_gap_s` (read from the container's
    index), frames every `min_interval_s` are candidates too. A candidate is kept when at least `min_interval_s`
    (widened so that no more than `max_frames` fit the duration) passed since the last kept frame and it differs
    from it by `scene_threshold` or more (0..1: mean of the grey-level histogram distance and the mean absolute
    pixel difference of small grey copies), or when `max_gap_s` passed without a kept frame. The first decodable
    frame is always kept. A still image gives one frame, itself.
    """
    stats = stats if stats is not None else KeyframeStats()
    if sniffed.format in _PILLOW_FORMAT or sniffed.format in _HEIF_FORMATS:
        image = _still_image(path, sniffed, max_side)
        stats.kept = 1
        yield DerivedFrame(_jpeg(image), 0.0, True, image.width, image.height)
        return
    try:
        with open_container(path, sniffed) as container:
            yield from _select_keyframes(
                container,
                max_frames=max(1, max_frames),
                min_interval_s=max(0.0, min_interval_s),
                scene_threshold=scene_threshold,
                max_gap_s=max(max_gap_s, min_interval_s, 0.1),
                max_side=max_side,
                stats=stats,
            )
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"The video could not be decoded: {_reason(exc, path)}") from exc
    if stats.kept == 0:
        raise CorruptMedia("The video could not be decoded: no keyframe decodes.")


def _select_keyframes(
    container: InputContainer,
    *,
    max_frames: int,
    min_interval_s: float,
    scene_threshold: float,
    max_gap_s: float,
    max_side: int,
    stats: KeyframeStats,
) -> Iterator[DerivedFrame]:
    stream = _main_video(container)
    origin = _origin(container)
    duration = _duration_s(container, stream)
    stats.duration_s = duration
    spacing = max(min_interval_s, duration / max_frames) if duration else min_interval_s
    time_base = float(stream.time_base) if stream.time_base is not None else None
    key_times = _index_keyframe_times(stream, time_base)
    end_s = (duration + origin) if duration else None
    dense = False
    _keyframes_only(stream)
    last_kept: tuple[float, Image.Image] | None = None
    last_candidate = float("-inf")
    for packet in container.demux(stream):
        if packet.is_keyframe and time_base is not None and key_times:
            # Each keyframe starts a group of pictures: decode all of it when it is longer than max_gap_s.
            at = _packet_time(packet, time_base)
            long_group = at is not None and _group_length(key_times, at, end_s) > max_gap_s
            if long_group != dense:
                dense = long_group
                if dense:
                    _decode_all(stream)
                    stats.dense_groups += 1
                else:
                    _keyframes_only(stream)
        for frame in _decode(packet):
            if not isinstance(frame, VideoFrame):
                continue
            stats.frames_decoded += 1
            stats.keyframes_decoded += int(frame.key_frame)
            time_s = _time_s(frame, origin)
            if not frame.key_frame and time_s - last_candidate < spacing:
                continue  # inside a long group: sample it at a fixed rate
            last_candidate = time_s
            signature = _signature(frame)
            if last_kept is None:
                keep, scene, score = True, True, None
            else:
                since = time_s - last_kept[0]
                score = _difference(signature, last_kept[1])
                scene = score >= scene_threshold
                keep = since >= max_gap_s or (scene and since >= spacing)
            if not keep:
                continue
            image = _frame_image(frame, max_side)
            last_kept = (time_s, signature)
            stats.kept += 1
            yield DerivedFrame(
                _jpeg(image),
                round(time_s, 3),
                scene,
                image.width,
                image.height,
                None if score is None else round(score, 4),
                bool(frame.key_frame),
            )
            if stats.kept >= max_frames:
                return


def _index_keyframe_times(stream: VideoStream, time_base: float | None) -> list[float]:
    """Keyframe times (seconds, container time) from the demuxer's index; empty when it has none."""
    if time_base is None:
        return []
    try:
        return sorted(entry.timestamp * time_base for entry in stream.index_entries if entry.is_keyframe)
    except (AttributeError, ValueError, av.FFmpegError):
        return []


def _group_length(key_times: list[float], at: float, end_s: float | None) -> float:
    """Seconds from the keyframe at `at` to the next one (or the end)."""
    following = bisect.bisect_right(key_times, at + 1e-3)
    if following < len(key_times):
        return key_times[following] - at
    return (end_s - at) if end_s is not None else 0.0


def _packet_time(packet: av.Packet[VideoStream], time_base: float) -> float | None:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return stamp * time_base if stamp is not None else None


def _keyframes_only(stream: VideoStream) -> None:
    """The demuxer drops non-key packets where it can, and the decoder skips any that still arrive."""
    stream.discard = Discard.nonkey
    stream.codec_context.skip_frame = "NONKEY"


def _decode_all(stream: VideoStream) -> None:
    stream.discard = Discard.default
    stream.codec_context.skip_frame = "DEFAULT"


def _video_frames(container: InputContainer, stream: VideoStream) -> Iterator[VideoFrame]:
    for packet in container.demux(stream):
        for frame in _decode(packet):
            if isinstance(frame, VideoFrame):
                yield frame


def _decode(packet: av.Packet[VideoStream] | None, stream: VideoStream | None = None) -> list[av.frame.Frame]:
    """The frames of one packet; a packet that does not decode is skipped (logged), as players do."""
    try:
        if packet is None:
            return list(stream.decode(None)) if stream is not None else []
        return list(packet.decode())
    except av.FFmpegError as exc:
        logger.debug("skipping a packet that does not decode: %s", exc.strerror)
        return []


def _main_video(container: InputContainer) -> VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & _NOT_REAL_VIDEO:
            stream.codec_context.thread_type = "AUTO"
            return stream
    raise CorruptMedia("The file holds no video stream.")


def _origin(container: InputContainer) -> float:
    """The container's start time, in seconds: timestamps are given from it."""
    start = container.start_time
    return start / av.time_base if start is not None and start > 0 else 0.0


def _duration_s(container: InputContainer, stream: VideoStream) -> float | None:
    if container.duration is not None and container.duration > 0:
        return float(container.duration / av.time_base)
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _time_s(frame: VideoFrame | AudioFrame, origin: float) -> float:
    return max(0.0, float(frame.time) - origin) if frame.time is not None else 0.0


def _signature(frame: VideoFrame) -> Image.Image:
    width, height = _SIGNATURE_SIZE
    grey = frame.reformat(width=width, height=height, format="gray", interpolation="AREA")
    plane = grey.planes[0]
    return Image.frombuffer("L", (width, height), bytes(plane), "raw", "L", plane.line_size, 1)


def _difference(a: Image.Image, b: Image.Image) -> float:
    """0 (same) to 1: the mean of the grey histogram distance and the mean absolute pixel difference."""
    pixels = ImageStat.Stat(ImageChops.difference(a, b)).mean[0] / 255
    ha, hb = _histogram(a), _histogram(b)
    histogram = sum(abs(x - y) for x, y in zip(ha, hb, strict=True)) / 2
    return (pixels + histogram) / 2


def _histogram(image: Image.Image, bins: int = 32) -> list[float]:
    counts = image.histogram()
    total = float(image.width * image.height)
    step = 256 // bins
    return [sum(counts[i : i + step]) / total for i in range(0, 256, step)]


def _frame_image(frame: VideoFrame, max_side: int) -> Image.Image:
    """The frame in RGB, scaled to fit `max_side` and turned upright by its display matrix."""
    scale = min(1.0, max_side / max(frame.width, frame.height))
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA" if scale < 1 else None)
    return _upright(_to_image(rgb), frame)


def _to_image(frame: VideoFrame) -> Image.Image:
    image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
    return image


def _upright(image: Image.Image, frame: VideoFrame) -> Image.Image:
    """Apply the frame's display rotation (counterclockwise degrees, in steps of 90)."""
    try:
        rotation = round(float(frame.rotation) / 90) * 90 % 360
    except (AttributeError, TypeError, ValueError):
        return image
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(turn[rotation]) if rotation in turn else image


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


# --- audio -----------------------------------------------------------------------------------------


class NoAudioTrack(AimaError):
    code = "NO_AUDIO_TRACK"

    def __init__(self) -> None:
        super().__init__("The file holds no audio stream.")


def audio_track(path: Path, sniffed: SniffedType, out: Path) -> AudioTrackInfo:
    """Write the first audio stream to `out` as 16 kHz mono 16-bit PCM WAV, starting at the media's time 0."""
    try:
        with open_container(path, sniffed) as container, out.open("wb") as sink:
            if not container.streams.audio:
                raise NoAudioTrack()
            stream = container.streams.audio[0]
            cc = stream.codec_context
            written, lead = _write_wav(container, stream, sink, _origin(container))
            if written == 0:
                raise CorruptMedia("The audio could not be decoded: no frame of it decodes.")
            return AudioTrackInfo(
                sample_rate=AUDIO_SAMPLE_RATE,
                channels=1,
                samples=written,
                duration_s=round(written / AUDIO_SAMPLE_RATE, 3),
                lead_s=round(lead, 3),
                source_codec=cc.name if cc is not None else None,
                source_sample_rate=(cc.sample_rate or None) if cc is not None else None,
                source_channels=(cc.channels or None) if cc is not None else None,
            )
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"The audio could not be decoded: {_reason(exc, path)}") from exc


def _write_wav(container: InputContainer, stream: av.AudioStream, sink: BinaryIO, origin: float) -> tuple[int, float]:
    """Decode, resample and write; returns the samples written and the seconds of leading silence."""
    resampler = AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE)
    written = 0
    lead = 0.0
    errors = 0
    started = False
    with wave.open(sink, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(AUDIO_SAMPLE_RATE)

        def write(frames: list[AudioFrame]) -> None:
            nonlocal written
            for frame in frames:
                wav.writeframesraw(bytes(frame.planes[0])[: frame.samples * 2])
                written += frame.samples

        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                errors += 1
                if errors > _MAX_DECODE_ERRORS and written == 0:
                    raise
                logger.debug("skipping an audio packet that does not decode: %s", exc.strerror)
                continue
            for frame in decoded:
                if not isinstance(frame, AudioFrame):
                    continue
                if not started:
                    started = True
                    lead = min(_time_s(frame, origin), MAX_LEAD_S)
                    silence = round(lead * AUDIO_SAMPLE_RATE)
                    if silence:
                        wav.writeframesraw(bytes(2 * silence))
                        written += silence
                write(resampler.resample(frame))
        write(resampler.resample(None))
    return written, lead


# --- shared ----------------------------------------------------------------------------------------


def _reason(exc: BaseException, path: Path) -> str:
    """A short, path-free reason for a decoder failure."""
    text = (exc.strerror if isinstance(exc, av.FFmpegError) else None) or str(exc) or type(exc).__name__
    for p in (str(path.resolve()), str(path)):
        text = text.replace(p, "<file>")
    return text[:200]
