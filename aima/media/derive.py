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
import struct
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.container import InputContainer
from av.stream import Discard, Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image, ImageChops, ImageOps, ImageStat

from aima.errors import AimaError, CorruptMedia, UnsupportedMedia
from aima.media import heif
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

#: Told the fraction of the media done (0..1), now and then; called in the deriving thread.
Progress = Callable[[float], None]


def _no_progress(fraction: float) -> None:
    return None


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
        image = _heif_image(path, sniffed, max_side)
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


def _heif_image(path: Path, sniffed: SniffedType, max_side: int) -> Image.Image:
    """The primary image of a HEIF file, upright: a grid's tiles put together, or the one coded image.

    ffmpeg gives each coded item of the file a stream (its id the item's id) but no way through PyAV to the grid that
    lays tiles out, so the grid and the rotation and mirroring (irot, imir) are read from the item boxes here (HEIF
    readers apply those, not the EXIF orientation). Tiles are scaled to fit `max_side` before they are put
    together, so a large photo never needs its full-size canvas.
    """
    try:
        layout = _read_heif_layout(path)
    except (struct.error, ValueError, IndexError, OSError) as exc:
        logger.info("unreadable HEIF item boxes: %s", exc)
        layout = None
    try:
        with open_container(path, sniffed) as container:
            streams = {s.id: s for s in container.streams.video}
            if not streams:
                raise CorruptMedia("The HEIF image holds no coded image.")
            if layout is not None and layout.grid is not None and all(t in streams for t in layout.grid.tiles):
                image = _grid_image(container, [streams[t] for t in layout.grid.tiles], layout.grid, max_side)
            else:
                primary = streams.get(layout.primary) if layout is not None else None
                stream = primary if primary is not None else next(iter(streams.values()))
                image = _to_image(_first_frame(container, [stream])[stream.index])
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"The HEIF image could not be decoded: {_reason(exc, path)}") from exc
    if layout is not None:
        for transform in layout.transforms:
            image = image.transpose(transform)
    return image


def _grid_image(container: InputContainer, tiles: list[VideoStream], grid: _HeifGrid, max_side: int) -> Image.Image:
    if grid.width * grid.height > DEFAULT_MAX_PIXELS or len(tiles) > _MAX_HEIF_TILES:
        raise UnsupportedMedia(f"The image is too large to decode safely ({grid.width}x{grid.height}).")
    frames = _first_frame(container, tiles)
    tile_w, tile_h = frames[tiles[0].index].width, frames[tiles[0].index].height
    scale = min(1.0, max_side / max(grid.width, grid.height))

    def at(n: int, size: int) -> int:
        return round(n * size * scale)

    canvas = Image.new("RGB", (at(grid.columns, tile_w), at(grid.rows, tile_h)))
    for n, stream in enumerate(tiles):
        row, column = divmod(n, grid.columns)
        box = (at(column, tile_w), at(row, tile_h), at(column + 1, tile_w), at(row + 1, tile_h))
        tile = _to_image(frames[stream.index])
        canvas.paste(tile.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BOX), box[:2])
    return canvas.crop((0, 0, max(1, round(grid.width * scale)), max(1, round(grid.height * scale))))


def _first_frame(container: InputContainer, streams: list[VideoStream]) -> dict[int, VideoFrame]:
    """The first decoded frame of each stream, by stream index; `CorruptMedia` if one has none."""
    found: dict[int, VideoFrame] = {}
    for packet in container.demux(*streams):
        for frame in _decode(packet):
            if isinstance(frame, VideoFrame):
                found.setdefault(packet.stream.index, frame)
        if len(found) == len(streams):
            return found
    for stream in streams:
        if stream.index not in found:
            for frame in _decode(None, stream):
                if isinstance(frame, VideoFrame):
                    found.setdefault(stream.index, frame)
    if len(found) < len(streams):
        raise CorruptMedia("The HEIF image could not be decoded: its image data does not decode.")
    return found


@dataclass(frozen=True)
class _HeifGrid:
    rows: int
    columns: int
    width: int
    height: int
    #: Item ids of the tiles, row by row.
    tiles: list[int]


@dataclass(frozen=True)
class _HeifLayout:
    primary: int
    grid: _HeifGrid | None
    #: The primary item's rotation (irot) and mirroring (imir), in the order they apply.
    transforms: list[Image.Transpose]


#: A grid's description is 8 or 12 bytes; a grid item declaring more than this is not read.
_MAX_GRID_ITEM_BYTES = 1024
_MAX_HEIF_TILES = 4096
_IROT = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
#: imir axis 0 mirrors about a vertical axis (left-right), 1 about a horizontal one (top-bottom).
_IMIR = {0: Image.Transpose.FLIP_LEFT_RIGHT, 1: Image.Transpose.FLIP_TOP_BOTTOM}


def _read_heif_layout(path: Path) -> _HeifLayout | None:
    """The primary item of a HEIF file, its grid when it is one, and its rotation and mirroring."""
    with path.open("rb") as f:
        meta = heif.MetaBox.read(f, path.stat().st_size)
        if meta is None or b"iinf" not in meta.children:
            return None
        primary = meta.primary_item()
        if primary is None:
            return None
        transforms = _transforms(meta, primary)
        if dict(meta.item_types()).get(primary) != b"grid":
            return _HeifLayout(primary, None, transforms)
        tiles = _references(meta, primary, b"dimg")
        location = next((location for location in meta.locations() if location.item == primary), None)
        data = None
        if location is not None:
            data = heif.read_item(f, meta.idat(), location, max_bytes=_MAX_GRID_ITEM_BYTES)
        if not tiles or data is None or len(data) < 8:
            return _HeifLayout(primary, None, transforms)
        flags = data[1]
        rows, columns = data[2] + 1, data[3] + 1
        width, height = struct.unpack_from(">II" if flags & 1 else ">HH", data, 4)
        if rows * columns != len(tiles):
            return _HeifLayout(primary, None, transforms)
        return _HeifLayout(primary, _HeifGrid(rows, columns, int(width), int(height), tiles), transforms)


def _references(meta: heif.MetaBox, item: int, wanted: bytes) -> list[int]:
    """The items an item refers to with references of type `wanted` (``iref``), at most `_MAX_HEIF_TILES`."""
    if b"iref" not in meta.children:
        return []
    data, (start, end) = meta.data, meta.children[b"iref"]
    fmt, step = (">I", 4) if data[start] != 0 else (">H", 2)
    for kind, s, _e in heif.boxes(data, start + 4, end):
        source = struct.unpack_from(fmt, data, s)[0]
        if kind != wanted or source != item:
            continue
        count = struct.unpack_from(">H", data, s + step)[0]
        first = s + step + 2
        return [struct.unpack_from(fmt, data, first + i * step)[0] for i in range(min(count, _MAX_HEIF_TILES))]
    return []


def _transforms(meta: heif.MetaBox, item: int) -> list[Image.Transpose]:
    """The irot and imir properties associated with an item, in association order."""
    found: list[Image.Transpose] = []
    for kind, start, _end in meta.properties(item):
        if kind == b"irot" and meta.data[start] & 3:
            found.append(_IROT[meta.data[start] & 3])
        elif kind == b"imir":
            found.append(_IMIR[meta.data[start] & 1])
    return found


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
    progress: Progress = _no_progress,
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
                progress=progress,
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
    progress: Progress,
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
            if duration:
                progress(min(1.0, _time_s(frame, origin) / duration))
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


def _decode(packet: av.Packet[Any] | None, stream: VideoStream | None = None) -> list[object]:
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


def audio_track(path: Path, sniffed: SniffedType, out: Path, *, progress: Progress = _no_progress) -> AudioTrackInfo:
    """Write the first audio stream to `out` as 16 kHz mono 16-bit PCM WAV, starting at the media's time 0."""
    try:
        with open_container(path, sniffed) as container, out.open("wb") as sink:
            if not container.streams.audio:
                raise NoAudioTrack()
            stream = container.streams.audio[0]
            cc = stream.codec_context
            duration = float(container.duration / av.time_base) if container.duration else None

            def report(seconds: float) -> None:
                if duration:
                    progress(min(1.0, seconds / duration))

            written, lead = _write_wav(container, stream, sink, _origin(container), report)
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


def _write_wav(
    container: InputContainer,
    stream: av.AudioStream,
    sink: BinaryIO,
    origin: float,
    report: Callable[[float], None],
) -> tuple[int, float]:
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
                report(written / AUDIO_SAMPLE_RATE)
        write(resampler.resample(None))
    return written, lead


# --- shared ----------------------------------------------------------------------------------------


def _reason(exc: BaseException, path: Path) -> str:
    """A short, path-free reason for a decoder failure."""
    text = (exc.strerror if isinstance(exc, av.FFmpegError) else None) or str(exc) or type(exc).__name__
    for p in (str(path.resolve()), str(path)):
        text = text.replace(p, "<file>")
    return text[:200]
