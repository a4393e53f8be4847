"""Small, real media files for tests and benchmarks.

Every ``make_*`` function returns the file's bytes; write them wherever a test needs them. They are built
with Pillow and PyAV (H.264, HEVC, VP8, MPEG-4, AAC, Opus, MP3, FLAC, PCM) and each takes milliseconds at
the default sizes.
"""

from __future__ import annotations

import array
import io
import math
import struct
import wave
import zlib
from dataclasses import dataclass
from typing import Any

import av
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import ExifTags, Image

#: What `make_jpeg(exif=True)` writes, for tests to compare against.
EXIF_MAKE = "AIMA Test"
EXIF_MODEL = "Synthetic Camera"
EXIF_DATETIME = "2024:05:06 07:08:09"
#: Latitude 52° 31' 12.5" N, longitude 13° 24' 0" E (Berlin).
GPS_LATITUDE = (52.0, 31.0, 12.5)
GPS_LONGITUDE = (13.0, 24.0, 0.0)


# --- images ----------------------------------------------------------------------------------------


def _picture(width: int, height: int, shift: int = 0) -> Image.Image:
    ramp = Image.linear_gradient("L").resize((width, height))
    if shift:
        ramp = ramp.point(lambda v: (v + shift) % 256)
    return Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp.rotate(180)))


def make_exif(*, gps: bool = True) -> Image.Exif:
    """EXIF with camera make and model, capture time and, optionally, a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = EXIF_MAKE
    exif[ExifTags.Base.Model] = EXIF_MODEL
    exif[ExifTags.Base.Orientation] = 1
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = EXIF_DATETIME
    if gps:
        gps_ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps_ifd[ExifTags.GPS.GPSLatitudeRef] = "N"
        gps_ifd[ExifTags.GPS.GPSLatitude] = GPS_LATITUDE
        gps_ifd[ExifTags.GPS.GPSLongitudeRef] = "E"
        gps_ifd[ExifTags.GPS.GPSLongitude] = GPS_LONGITUDE
    return exif


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def make_jpeg(width: int = 64, height: int = 48, *, exif: bool = True, gps: bool = True, quality: int = 85) -> bytes:
    params: dict[str, Any] = {"quality": quality}
    if exif:
        params["exif"] = make_exif(gps=gps)
    return _save(_picture(width, height), "JPEG", **params)


def make_png(width: int = 64, height: int = 48, *, mode: str = "RGB", exif: bool = False) -> bytes:
    params: dict[str, Any] = {"exif": make_exif()} if exif else {}
    return _save(_picture(width, height).convert(mode), "PNG", **params)


def make_gif(width: int = 64, height: int = 48, *, frames: int = 3) -> bytes:
    images = [_picture(width, height, shift=i * 40).convert("P") for i in range(frames)]
    return _save(images[0], "GIF", save_all=frames > 1, append_images=images[1:], duration=100, loop=0)


def make_webp(width: int = 64, height: int = 48, *, frames: int = 1) -> bytes:
    images = [_picture(width, height, shift=i * 40) for i in range(frames)]
    return _save(images[0], "WEBP", save_all=frames > 1, append_images=images[1:], duration=100, quality=80)


def make_tiff(width: int = 64, height: int = 48) -> bytes:
    return _save(_picture(width, height), "TIFF", compression="tiff_deflate")


def make_png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit black PNG of `width` x `height`; 400 megapixels by default, about 60 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    block = row * rows_per_chunk
    parts = []
    for _ in range(height // rows_per_chunk):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * (height % rows_per_chunk)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# --- video and audio -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Video:
    codec: str
    width: int
    height: int
    fps: int
    options: dict[str, str]


@dataclass(frozen=True)
class _Audio:
    codec: str
    rate: int
    layout: str


_X264 = {"preset": "ultrafast"}
_VP8 = {"deadline": "realtime", "cpu-used": "8"}


def _video_frames(video: _Video, seconds: float) -> list[VideoFrame]:
    count = max(1, round(seconds * video.fps))
    frames = []
    ramp = b""
    for i in range(count):
        frame = VideoFrame(video.width, video.height, "yuv420p")
        luma, *chroma = frame.planes
        stride = luma.line_size
        if not ramp:
            ramp = bytes((k * 3) & 0xFF for k in range(stride + luma.height + 8 * count))
        shift = 8 * i  # a moving diagonal ramp
        luma.update(b"".join(ramp[r + shift : r + shift + stride] for r in range(luma.height)))
        for plane in chroma:
            plane.update(bytes([128 + 16 * (i % 4)]) * plane.buffer_size)
        frame.pts = i
        frames.append(frame)
    return frames


def _audio_frames(audio: _Audio, seconds: float) -> list[AudioFrame]:
    total = max(1, round(seconds * audio.rate))
    step = 2 * math.pi * 440 / audio.rate
    samples = array.array("f", (0.25 * math.sin(step * n) for n in range(total)))
    channels = len(av.AudioLayout(audio.layout).channels)
    frames = []
    for start in range(0, total, 1024):
        chunk = samples[start : start + 1024]
        frame = AudioFrame(format="fltp", layout=audio.layout, samples=len(chunk))
        frame.sample_rate = audio.rate
        frame.pts = start
        data = chunk.tobytes()
        for plane in frame.planes[:channels]:
            plane.update(data + bytes(plane.buffer_size - len(data)))
        frames.append(frame)
    return frames


def _encode(
    container_format: str,
    seconds: float,
    *,
    video: _Video | None,
    audio: _Audio | None,
    container_options: dict[str, str] | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format=container_format, container_options=container_options or {}) as container:
        # Every stream must exist before the first packet is written.
        for name, mimetype, data in attachments:
            container.add_attachment(name, mimetype, data)
        vstream = container.add_stream(video.codec, rate=video.fps, options=video.options) if video else None
        astream = container.add_stream(audio.codec, rate=audio.rate, layout=audio.layout) if audio else None
        if video is not None and isinstance(vstream, VideoStream):
            vstream.width, vstream.height, vstream.pix_fmt = video.width, video.height, "yuv420p"
            for frame in _video_frames(video, seconds):
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if audio is not None and isinstance(astream, AudioStream):
            for aframe in _audio_frames(audio, seconds):
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return out.getvalue()


def make_mp4(
    seconds: float = 1.0,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    *,
    audio: bool = True,
    video: bool = True,
    sample_rate: int = 48_000,
    channels: int = 2,
) -> bytes:
    """MP4 with H.264 video and AAC audio (either may be left out)."""
    return _encode(
        "mp4",
        seconds,
        video=_Video("libx264", width, height, fps, _X264) if video else None,
        audio=_Audio("aac", sample_rate, _layout(channels)) if audio else None,
    )


def make_mov(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10) -> bytes:
    """QuickTime (ftyp ``qt``) with H.264 video and AAC audio."""
    return _encode(
        "mov",
        seconds,
        video=_Video("libx264", width, height, fps, _X264),
        audio=_Audio("aac", 48_000, "stereo"),
    )


def make_m4a(seconds: float = 1.0, sample_rate: int = 44_100, channels: int = 2) -> bytes:
    """Audio-only MP4 with the ``M4A`` brand, AAC."""
    return _encode("ipod", seconds, video=None, audio=_Audio("aac", sample_rate, _layout(channels)))


def make_mkv(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10, *, audio: bool = True) -> bytes:
    """Matroska with H.264 video and AAC audio."""
    return _encode(
        "matroska",
        seconds,
        video=_Video("libx264", width, height, fps, _X264),
        audio=_Audio("aac", 48_000, "stereo") if audio else None,
    )


def make_mka(seconds: float = 1.0, *, cover_art: bool = True) -> bytes:
    """Audio-only Matroska (FLAC), with a JPEG cover image attached unless told otherwise."""
    cover = (("cover.jpg", "image/jpeg", make_jpeg(exif=False)),) if cover_art else ()
    return _encode("matroska", seconds, video=None, audio=_Audio("flac", 44_100, "stereo"), attachments=cover)


def make_webm(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10, *, video: bool = True) -> bytes:
    """WebM with VP8 video and Opus audio (audio only when `video` is false)."""
    return _encode(
        "webm",
        seconds,
        video=_Video("libvpx", width, height, fps, _VP8) if video else None,
        audio=_Audio("libopus", 48_000, "stereo"),
    )


def make_avi(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10) -> bytes:
    """AVI with MPEG-4 Part 2 video and 16-bit PCM audio."""
    return _encode(
        "avi",
        seconds,
        video=_Video("mpeg4", width, height, fps, {}),
        audio=_Audio("pcm_s16le", 22_050, "mono"),
    )


def make_mpegts(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10) -> bytes:
    """MPEG transport stream with H.264 video: not an allowed upload, but what HLS playlists point at."""
    return _encode("mpegts", seconds, video=_Video("libx264", width, height, fps, _X264), audio=None)


def make_ogg(seconds: float = 1.0, channels: int = 2) -> bytes:
    """Ogg with Opus audio."""
    return _encode("ogg", seconds, video=None, audio=_Audio("libopus", 48_000, _layout(channels)))


def make_mp3(seconds: float = 1.0, sample_rate: int = 44_100, channels: int = 2, *, id3: bool = True) -> bytes:
    """MP3 (LAME); without `id3` the file starts straight with an MPEG audio frame."""
    options = {} if id3 else {"id3v2_version": "0", "write_xing": "0"}
    return _encode(
        "mp3",
        seconds,
        video=None,
        audio=_Audio("libmp3lame", sample_rate, _layout(channels)),
        container_options=options,
    )


def make_flac(seconds: float = 1.0, sample_rate: int = 44_100, channels: int = 2) -> bytes:
    return _encode("flac", seconds, video=None, audio=_Audio("flac", sample_rate, _layout(channels)))


def make_aac(seconds: float = 1.0, sample_rate: int = 44_100, channels: int = 2) -> bytes:
    """Raw AAC in ADTS frames."""
    return _encode("adts", seconds, video=None, audio=_Audio("aac", sample_rate, _layout(channels)))


def make_wav(seconds: float = 1.0, rate: int = 16_000, channels: int = 1) -> bytes:
    """16-bit PCM WAV with a 440 Hz tone."""
    total = max(1, round(seconds * rate))
    step = 2 * math.pi * 440 / rate
    mono = array.array("h", (int(8000 * math.sin(step * n)) for n in range(total)))
    samples = mono if channels == 1 else array.array("h", (s for s in mono for _ in range(channels)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


# --- HEIC ------------------------------------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def _hevc_still(width: int, height: int) -> tuple[bytes, bytes]:
    """One HEVC-coded picture: its ``hvcC`` configuration box and its length-prefixed data."""
    mp4 = _encode(
        "mp4",
        1.0,
        video=_Video(
            "libx265",
            width,
            height,
            1,
            {"preset": "ultrafast", "x265-params": "log-level=none:bframes=0:frame-threads=1:pools=1"},
        ),
        audio=None,
    )
    at = mp4.index(b"hvcC") - 4
    hvcc = mp4[at : at + struct.unpack(">I", mp4[at : at + 4])[0]]
    at = mp4.index(b"mdat") - 4
    sample = mp4[at + 8 : at + struct.unpack(">I", mp4[at : at + 4])[0]]
    return hvcc, sample


def make_heic(width: int = 64, height: int = 48, *, exif: bool = True) -> bytes:
    """A single-image HEIC: one HEVC item (no grid) and, unless told otherwise, an EXIF item (`make_exif`)."""
    hvcc, picture = _hevc_still(width, height)
    exif_blob = struct.pack(">I", 6) + make_exif().tobytes() if exif else b""  # tobytes() starts "Exif\0\0"
    ftyp = _box(b"ftyp", b"heic" + struct.pack(">I", 0) + b"mif1heic")

    def meta(data_offset: int) -> bytes:
        items = [(1, b"hvc1", data_offset, len(picture))]
        if exif:
            items.append((2, b"Exif", data_offset + len(picture), len(exif_blob)))
        hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I4s12xB", 0, b"pict", 0))
        pitm = _full_box(b"pitm", 0, 0, struct.pack(">H", 1))
        iloc = _full_box(
            b"iloc",
            0,
            0,
            bytes([0x44, 0x00])
            + struct.pack(">H", len(items))
            + b"".join(struct.pack(">HHHII", item, 0, 1, offset, length) for item, _t, offset, length in items),
        )
        infes = b"".join(_full_box(b"infe", 2, 0, struct.pack(">HH4sB", i, 0, t, 0)) for i, t, _o, _l in items)
        iinf = _full_box(b"iinf", 0, 0, struct.pack(">H", len(items)) + infes)
        iref = _full_box(b"iref", 0, 0, _box(b"cdsc", struct.pack(">HHH", 2, 1, 1))) if exif else b""
        ispe = _full_box(b"ispe", 0, 0, struct.pack(">II", width, height))
        ipma = _full_box(b"ipma", 0, 0, struct.pack(">IHB", 1, 1, 2) + bytes([0x81, 0x02]))
        iprp = _box(b"iprp", _box(b"ipco", hvcc + ispe) + ipma)
        return _full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp)

    data_offset = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(data_offset) + _box(b"mdat", picture + exif_blob)


# --- scenes (derived files) ------------------------------------------------------------------------

#: Solid colours of `make_scene_video`'s scenes: red, green, blue, yellow.
SCENE_COLOURS: tuple[tuple[int, int, int], ...] = ((200, 30, 30), (30, 190, 40), (30, 40, 200), (230, 220, 40))


def make_scene_video(
    scenes: int = 3,
    scene_seconds: float = 2.0,
    *,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    gop_seconds: float = 1.0,
    audio: bool = True,
    container_format: str = "mp4",
) -> bytes:
    """H.264 video of solid-colour scenes (`SCENE_COLOURS` in turn, a small bar moving across each), with a codec
    keyframe every `gop_seconds` exactly (no scene-cut detection) and, unless told otherwise, an AAC tone."""
    gop = max(1, round(gop_seconds * fps))
    options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    per_scene = max(1, round(scene_seconds * fps))
    out = io.BytesIO()
    with av.open(out, mode="w", format=container_format) as container:
        vstream = container.add_stream("libx264", rate=fps, options=options)
        astream = container.add_stream("aac", rate=48_000, layout="stereo") if audio else None
        assert isinstance(vstream, VideoStream)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        for i in range(scenes * per_scene):
            colour = SCENE_COLOURS[(i // per_scene) % len(SCENE_COLOURS)]
            picture = Image.new("RGB", (width, height), colour)
            bar = (i * 7) % max(1, width - 8)
            picture.paste((255, 255, 255), (bar, height // 3, bar + 8, height // 3 + 8))
            frame = VideoFrame.from_image(picture).reformat(format="yuv420p")  # type: ignore[no-untyped-call]
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if isinstance(astream, AudioStream):
            for aframe in _audio_frames(_Audio("aac", 48_000, "stereo"), scenes * per_scene / fps):
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return out.getvalue()


def _hevc_picture(image: Image.Image) -> tuple[bytes, bytes]:
    """One HEVC-coded picture of `image`: its ``hvcC`` box and its length-prefixed data."""
    out = io.BytesIO()
    x265 = {"preset": "ultrafast", "x265-params": "log-level=none:bframes=0:frame-threads=1:pools=1"}
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx265", rate=1, options=x265)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = image.width, image.height, "yuv420p"
        frame = VideoFrame.from_image(image).reformat(format="yuv420p")  # type: ignore[no-untyped-call]
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    mp4 = out.getvalue()
    at = mp4.index(b"hvcC") - 4
    hvcc = mp4[at : at + struct.unpack(">I", mp4[at : at + 4])[0]]
    at = mp4.index(b"mdat") - 4
    return hvcc, mp4[at + 8 : at + struct.unpack(">I", mp4[at : at + 4])[0]]


def make_heic_grid(
    columns: int = 2,
    rows: int = 2,
    *,
    tile: tuple[int, int] = (64, 48),
    size: tuple[int, int] = (120, 90),
    rotation: int = 0,
) -> bytes:
    """A HEIC whose primary image is a grid (as phones write them): `columns` x `rows` HEVC tiles, each a solid
    `SCENE_COLOURS` colour row by row, cropped to `size`; `rotation` (0-3) adds an ``irot`` of that many quarter
    turns counterclockwise."""
    tiles = [
        _hevc_picture(Image.new("RGB", tile, SCENE_COLOURS[n % len(SCENE_COLOURS)])) for n in range(rows * columns)
    ]
    hvcc = tiles[0][0]
    count = len(tiles)
    grid = struct.pack(">BBBBHH", 0, 0, rows - 1, columns - 1, *size)
    ftyp = _box(b"ftyp", b"heic" + struct.pack(">I", 0) + b"mif1heic")

    def meta(data_offset: int) -> bytes:
        hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I4s12xB", 0, b"pict", 0))
        pitm = _full_box(b"pitm", 0, 0, struct.pack(">H", 1))
        # iloc version 1: item, construction method (1: idat), data reference, extent count, offset, length.
        entries = [struct.pack(">HHHHII", 1, 1, 0, 1, 0, len(grid))]
        offset = data_offset
        for n, (_hvcc, picture) in enumerate(tiles):
            entries.append(struct.pack(">HHHHII", 2 + n, 0, 0, 1, offset, len(picture)))
            offset += len(picture)
        iloc = _full_box(b"iloc", 1, 0, bytes([0x44, 0x00]) + struct.pack(">H", len(entries)) + b"".join(entries))
        infes = _full_box(b"infe", 2, 0, struct.pack(">HH4sB", 1, 0, b"grid", 0))
        infes += b"".join(_full_box(b"infe", 2, 1, struct.pack(">HH4sB", 2 + n, 0, b"hvc1", 0)) for n in range(count))
        iinf = _full_box(b"iinf", 0, 0, struct.pack(">H", count + 1) + infes)
        references = struct.pack(">HH", 1, count) + b"".join(struct.pack(">H", 2 + n) for n in range(count))
        iref = _full_box(b"iref", 0, 0, _box(b"dimg", references))
        # Properties: 1 hvcC, 2 the tiles' ispe, 3 the grid's ispe, 4 irot.
        ipco = hvcc + _full_box(b"ispe", 0, 0, struct.pack(">II", *tile))
        ipco += _full_box(b"ispe", 0, 0, struct.pack(">II", *size)) + _box(b"irot", bytes([rotation & 3]))
        grid_properties = bytes([0x03, 0x84]) if rotation else bytes([0x03])
        associations = struct.pack(">HB", 1, len(grid_properties)) + grid_properties
        associations += b"".join(struct.pack(">HB", 2 + n, 2) + bytes([0x81, 0x02]) for n in range(count))
        ipma = _full_box(b"ipma", 0, 0, struct.pack(">I", count + 1) + associations)
        iprp = _box(b"iprp", _box(b"ipco", ipco) + ipma)
        return _full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp + _box(b"idat", grid))

    data_offset = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(data_offset) + _box(b"mdat", b"".join(picture for _hvcc, picture in tiles))
