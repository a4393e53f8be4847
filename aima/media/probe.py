"""Probing: what a media file holds, read with Pillow (still images) and PyAV (video, audio and HEIF images).

`probe_file` proves the file decodes (a whole still image; the first frame of the main video and audio
streams) and returns a JSON-friendly `MediaProbe`. Every decoder failure becomes `CorruptMedia`; images
above a pixel limit become `UnsupportedMedia`.

ffmpeg can follow references from one file to others (HLS and concat playlists, QuickTime data references).
`open_container` shuts that off: only the ``file`` protocol and only the demuxers of the allowlist may be
used, so a crafted file cannot make ffmpeg read other local files or URLs. A ``protocol_whitelist`` alone
is not enough: an HLS or concat playlist may still name other local files through ``file``.
"""

from __future__ import annotations

import logging
import numbers
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import av
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.container import InputContainer
from av.stream import Disposition, Stream
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from PIL import ExifTags, Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from aima.analysis import MediaKind
from aima.errors import CorruptMedia, UnsupportedMedia
from aima.media import heif
from aima.media.sniff import SUPPORTED_DESCRIPTION, SniffedType, sniff_stream
from aima.media.source import LocalFile, MediaSource

logger = logging.getLogger(__name__)

#: Images with more pixels than this are refused. Pillow's own decompression-bomb check (its
#: ``Image.MAX_IMAGE_PIXELS``, about 89 megapixels by default) also applies and is treated as an error.
DEFAULT_MAX_PIXELS = 200_000_000
#: ffmpeg demuxers that may be used; matched against each of a demuxer's names ("mov,mp4,..." matches "mov").
ALLOWED_DEMUXERS = "mov,matroska,webm,avi,wav,mp3,flac,ogg,aac"
#: How many packets of the chosen streams to read while looking for a first decodable frame.
MAX_PROBE_PACKETS = 1000

_DEMUXER_FOR_FORMAT = {
    "mp4": "mov",
    "m4a": "mov",
    "mov": "mov",
    "3gp": "mov",
    "3g2": "mov",
    "heic": "mov",
    "heif": "mov",
    "matroska": "matroska",
    "webm": "matroska",
    "avi": "avi",
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "ogg": "ogg",
    "aac": "aac",
}
_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF"}
_DISPLAY_NAME = {
    "jpeg": "JPEG image",
    "png": "PNG image",
    "gif": "GIF image",
    "webp": "WebP image",
    "tiff": "TIFF image",
    "heic": "HEIC image",
    "heif": "HEIF image",
    "mp4": "MP4 file",
    "m4a": "M4A file",
    "mov": "QuickTime file",
    "3gp": "3GP file",
    "3g2": "3G2 file",
    "matroska": "Matroska file",
    "webm": "WebM file",
    "avi": "AVI file",
    "wav": "WAV file",
    "mp3": "MP3 file",
    "flac": "FLAC file",
    "ogg": "Ogg file",
    "aac": "AAC file",
}
#: Content types for containers whose kind the streams decided, when it differs from the sniffed one.
_REFINED_CONTENT_TYPE = {
    ("mp4", MediaKind.AUDIO): "audio/mp4",
    ("m4a", MediaKind.VIDEO): "video/mp4",
    ("mov", MediaKind.AUDIO): "audio/mp4",
    ("3gp", MediaKind.AUDIO): "audio/3gpp",
    ("3g2", MediaKind.AUDIO): "audio/3gpp2",
    ("webm", MediaKind.AUDIO): "audio/webm",
    ("matroska", MediaKind.AUDIO): "audio/x-matroska",
    ("ogg", MediaKind.AUDIO): "audio/ogg",
    ("ogg", MediaKind.VIDEO): "video/ogg",
}
#: Codecs of still pictures; a one-frame stream of these next to audio is cover art even without the flag.
_STILL_IMAGE_CODECS = frozenset({"mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpegls", "jpeg2000"})
_NOT_REAL_VIDEO = Disposition.attached_pic | Disposition.timed_thumbnails | Disposition.still_image

# Pillow raises all of these for malformed input.
_PILLOW_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)
_AV_ERRORS: tuple[type[Exception], ...] = (av.FFmpegError, OSError, EOFError, ValueError, IndexError)

_MAX_EXIF_ENTRIES = 500
_MAX_TEXT = 512
_MAX_TAGS = 100

StreamType = Literal["video", "audio", "subtitle", "data", "attachment", "unknown"]


class StreamInfo(BaseModel):
    """One stream of a video or audio container (or a tile of a HEIF image)."""

    index: int
    type: StreamType
    codec: str | None = None
    codec_long_name: str | None = None
    profile: str | None = None
    bit_rate: int | None = None
    duration_s: float | None = None
    language: str | None = None
    #: Cover art and thumbnails: pictures, not video.
    attached_pic: bool = False
    #: Whether a frame was decoded from it: None when not tried (only the first video and audio streams are).
    decoded: bool | None = None
    width: int | None = None
    height: int | None = None
    pixel_format: str | None = None
    #: Average frame rate, frames per second.
    frame_rate: float | None = None
    #: Frame count from the container, when it records one.
    frames: int | None = None
    #: Display rotation in degrees from the stream's display matrix, when known.
    rotation: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    channel_layout: str | None = None


class ImageInfo(BaseModel):
    """What a still (or animated) image holds."""

    #: Decoder format name: JPEG, PNG, GIF, WEBP, TIFF, MPO, HEIF.
    format: str
    #: Pillow mode ("RGB", "L", "P", ...); for HEIF images, the decoder's pixel format ("yuv420p").
    mode: str
    width: int
    height: int
    frames: int = 1
    animated: bool = False
    #: EXIF tags by name with printable values; GPS tags as ``GPSInfo.<name>``, interoperability tags as
    #: ``Interop.<name>``; binary values as hex when short, else left out.
    exif: dict[str, str] = Field(default_factory=dict)


class MediaProbe(BaseModel):
    """The facts `probe_file` established about a media file."""

    kind: MediaKind
    content_type: str
    #: Short format name from sniffing (see `SniffedType.format`).
    format: str
    format_long_name: str | None = None
    #: The ffmpeg demuxer that read it, for video, audio and HEIF.
    demuxer: str | None = None
    size_bytes: int
    duration_s: float | None = None
    bit_rate: int | None = None
    #: Of the first video stream, or of the image.
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    audio_channels: int | None = None
    audio_sample_rate: int | None = None
    streams: list[StreamInfo] = Field(default_factory=list)
    image: ImageInfo | None = None
    #: Container metadata (creation_time, location, encoder, ...).
    tags: dict[str, str] = Field(default_factory=dict)


def probe_file(
    path: Path | MediaSource,
    sniffed: SniffedType | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> MediaProbe:
    """Describe a media file (a local path, or any `MediaSource`) and prove that it decodes.

    `sniffed` is what `sniff` said about the file's first bytes; it is worked out here when not given.
    Raises `UnsupportedMedia` for files outside the allowlist or above `max_pixels`, `CorruptMedia` when
    decoding fails.
    """
    source: MediaSource = LocalFile(path) if isinstance(path, Path) else path
    if sniffed is None:
        sniffed = sniff_source(source)
    size = source.size
    if sniffed.format in _PILLOW_FORMAT:
        return _probe_pillow(source, sniffed, size, max_pixels)
    if sniffed.format in ("heic", "heif"):
        return _probe_heif(source, sniffed, size, max_pixels)
    if sniffed.format in _DEMUXER_FOR_FORMAT:
        return _probe_av(source, sniffed, size)
    raise UnsupportedMedia(f"Files of format {sniffed.format!r} are not supported. {SUPPORTED_DESCRIPTION}")


def sniff_source(source: MediaSource) -> SniffedType:
    with source.open() as f:
        return sniff_stream(f)


def open_container(path: Path | MediaSource, sniffed: SniffedType | None = None) -> InputContainer:
    """Open a video, audio or HEIF file with PyAV so that ffmpeg reads this one file and nothing else.

    Only the ``file`` protocol and the demuxers in `ALLOWED_DEMUXERS` are usable; the demuxer is forced from
    `sniffed` when given. A `MediaSource` other than a local file is read through Python (no ffmpeg protocol at
    all). Use it (as a context manager) wherever the project opens untrusted media with PyAV.
    """
    demuxer = _DEMUXER_FOR_FORMAT.get(sniffed.format) if sniffed is not None else None
    options = {"protocol_whitelist": "file", "format_whitelist": ALLOWED_DEMUXERS}
    if demuxer == "mov":
        options["enable_drefs"] = "0"  # the default; QuickTime data references may name other files
    if isinstance(path, LocalFile):
        path = path.path
    target: str | BinaryIO = str(path.absolute()) if isinstance(path, Path) else path.open()
    return av.open(target, mode="r", format=demuxer, container_options=options, metadata_errors="replace")


# --- Pillow ----------------------------------------------------------------------------------------


def _probe_pillow(path: MediaSource, sniffed: SniffedType, size: int, max_pixels: int) -> MediaProbe:
    label = _label(sniffed)
    # A context, not a global filter: Pillow's bomb warning is an error here only. (`catch_warnings` is
    # process-wide; the explicit pixel check below does not depend on it.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            info, long_name = _read_pillow_image(path, _PILLOW_FORMAT[sniffed.format], max_pixels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UnsupportedMedia(f"The image is too large to decode safely: {exc}") from exc
        except _PILLOW_ERRORS as exc:
            raise CorruptMedia(f"{label} could not be decoded: {_reason(exc, path)}") from exc
    return MediaProbe(
        kind=MediaKind.IMAGE,
        content_type=sniffed.content_type,
        format=sniffed.format,
        format_long_name=long_name,
        size_bytes=size,
        width=info.width,
        height=info.height,
        image=info,
    )


def _read_pillow_image(path: MediaSource, pillow_format: str, max_pixels: int) -> tuple[ImageInfo, str | None]:
    with path.open() as f, Image.open(f, formats=[pillow_format]) as im:
        _check_pixels(im.size, max_pixels)
        im.verify()  # checks PNG chunk CRCs; for other formats the full decode below does the work
    with path.open() as f, Image.open(f, formats=[pillow_format]) as im:
        width, height = im.size
        mode = im.mode
        frames = int(getattr(im, "n_frames", 1))
        _check_pixels(im.size, max_pixels)  # counting GIF frames may have grown the canvas
        if im.format in ("JPEG", "MPO"):
            # Decoding at 1/8 scale still reads every byte of entropy-coded data, so truncation and corrupt
            # data are caught, for a fraction of the time and memory.
            im.draft(None, (max(1, width // 8), max(1, height // 8)))
        im.load()
        info = ImageInfo(
            format=im.format or pillow_format,
            mode=mode,
            width=width,
            height=height,
            frames=frames,
            animated=frames > 1,
            exif=_pillow_exif(im),  # after load(): a PNG's eXIf chunk may follow the image data
        )
        return info, im.format_description


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise UnsupportedMedia(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
            f"limit of {max_pixels / 1e6:g} megapixels."
        )


def _pillow_exif(im: Image.Image) -> dict[str, str]:
    try:
        return exif_to_dict(im.getexif())
    except _PILLOW_ERRORS as exc:
        logger.warning("ignoring unreadable EXIF data: %s", exc)
        return {}


_EXIF_POINTERS = frozenset({ExifTags.Base.ExifOffset, ExifTags.Base.GPSInfo, ExifTags.Base.ExifInteroperabilityOffset})
_EXIF_SKIPPED = frozenset({ExifTags.Base.MakerNote, ExifTags.Base.PrintImageMatching})


def exif_to_dict(exif: Image.Exif) -> dict[str, str]:
    """Flatten EXIF into tag names and printable values (the base, Exif, GPS and interoperability IFDs)."""
    out: dict[str, str] = {}
    groups: list[tuple[dict[int, object], str, dict[int, str]]] = [(dict(exif), "", ExifTags.TAGS)]
    for ifd, prefix, names in (
        (ExifTags.IFD.Exif, "", ExifTags.TAGS),
        (ExifTags.IFD.GPSInfo, "GPSInfo.", ExifTags.GPSTAGS),
        (ExifTags.IFD.Interop, "Interop.", ExifTags.TAGS),
    ):
        try:
            groups.append((dict(exif.get_ifd(ifd)), prefix, names))
        except _PILLOW_ERRORS as exc:
            logger.warning("ignoring unreadable EXIF %s directory: %s", ifd.name, exc)
    for tags, prefix, names in groups:
        for tag, value in tags.items():
            if tag in _EXIF_POINTERS or tag in _EXIF_SKIPPED or len(out) >= _MAX_EXIF_ENTRIES:
                continue
            name = names.get(tag) or f"0x{tag:04X}"
            text = _exif_text(name, value)
            if text is not None:
                out[prefix + name] = text
    return out


def _exif_text(name: str, value: object) -> str | None:
    if isinstance(value, bytes):
        return _exif_bytes(name, value)
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, tuple | list):
        parts = [_exif_text(name, v) for v in value[:64]]
        text = ", ".join(p for p in parts if p is not None)
        return text + (", ..." if len(value) > 64 else "")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), ".10g")
    return _clean_text(str(value))


def _exif_bytes(name: str, value: bytes) -> str | None:
    if name == "UserComment" and len(value) >= 8:
        charset, body = value[:8].rstrip(b"\x00 "), value[8:]
        encoding = {b"ASCII": "ascii", b"UNICODE": "utf-16", b"JIS": "shift_jis"}.get(charset, "ascii")
        return _clean_text(body.decode(encoding, "replace"))
    stripped = value.rstrip(b"\x00")
    if stripped and all(0x20 <= b < 0x7F for b in stripped):
        return stripped.decode("ascii")
    if len(value) <= 64:
        return value.hex()
    return None


def _clean_text(text: str) -> str | None:
    cleaned = "".join(c for c in text if c.isprintable() or c == " ").strip()
    return cleaned[:_MAX_TEXT] or None


# --- PyAV ------------------------------------------------------------------------------------------


def _probe_av(path: MediaSource, sniffed: SniffedType, size: int) -> MediaProbe:
    label = _label(sniffed)
    try:
        with open_container(path, sniffed) as container:
            audio = list(container.streams.audio)
            video = [s for s in container.streams.video if _is_real_video(s, has_audio=bool(audio))]
            main_video = video[0] if video else None
            main_audio = audio[0] if audio else None
            primary = main_video if main_video is not None else main_audio
            if primary is None:
                raise CorruptMedia(f"{label} contains no audio or video stream.")
            infos = {s.index: _stream_info(s) for s in container.streams}
            _decode_first_frames(container, [s for s in (main_video, main_audio) if s is not None], infos)
            if not infos[primary.index].decoded:
                raise CorruptMedia(f"{label} could not be decoded: no frame of its {primary.type} decodes.")
            kind = MediaKind.VIDEO if main_video is not None else MediaKind.AUDIO
            video_info = infos[main_video.index] if main_video is not None else None
            audio_info = infos[main_audio.index] if main_audio is not None else None
            return MediaProbe(
                kind=kind,
                content_type=_REFINED_CONTENT_TYPE.get((sniffed.format, kind), sniffed.content_type),
                format=sniffed.format,
                format_long_name=container.format.long_name,
                demuxer=container.format.name,
                size_bytes=size,
                duration_s=_container_duration(container, list(infos.values())),
                bit_rate=container.bit_rate or None,
                width=video_info.width if video_info else None,
                height=video_info.height if video_info else None,
                frame_rate=video_info.frame_rate if video_info else None,
                audio_channels=audio_info.channels if audio_info else None,
                audio_sample_rate=audio_info.sample_rate if audio_info else None,
                streams=[infos[i] for i in sorted(infos)],
                tags=_tags(container.metadata),
            )
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"{label} could not be decoded: {_reason(exc, path)}") from exc


def _is_real_video(stream: Stream, *, has_audio: bool) -> bool:
    if stream.disposition & _NOT_REAL_VIDEO:
        return False
    # A single still picture next to audio is cover art even without the flag.
    return not (has_audio and _codec_name(stream) in _STILL_IMAGE_CODECS and stream.frames <= 1)


def _codec_name(stream: Stream) -> str | None:
    """The codec's canonical name ("mp3", not the decoder's "mp3float"); None when ffmpeg has no decoder."""
    cc = stream.codec_context
    if cc is None:
        return None
    return cc.codec.canonical_name if cc.codec is not None else cc.name


def _stream_info(stream: Stream) -> StreamInfo:
    info = StreamInfo(
        index=stream.index,
        type=stream.type,
        profile=stream.profile,
        language=stream.language,
        duration_s=_seconds(stream.duration, stream),
        frames=stream.frames or None,
        attached_pic=bool(stream.disposition & Disposition.attached_pic),
    )
    cc = stream.codec_context
    if cc is None:  # data and attachment streams may have none
        return info
    info.codec = _codec_name(stream)
    info.codec_long_name = cc.codec.long_name if cc.codec is not None else None
    info.bit_rate = cc.bit_rate or None
    if isinstance(cc, VideoCodecContext):
        info.width = cc.width or None
        info.height = cc.height or None
        info.pixel_format = cc.pix_fmt
        rate = stream.average_rate or stream.guessed_rate
        info.frame_rate = round(float(rate), 3) if rate and not info.attached_pic else None
    elif isinstance(cc, AudioCodecContext):
        info.sample_rate = cc.sample_rate or None
        info.channels = cc.channels or None
        info.channel_layout = cc.layout.name if cc.channels else None
    return info


def _decode_first_frames(container: InputContainer, streams: list[Stream], infos: dict[int, StreamInfo]) -> None:
    """Decode one frame of each stream, marking `decoded` in `infos`; errors are logged, not raised."""
    for s in streams:
        infos[s.index].decoded = False
    pending = {s.index for s in streams if s.codec_context is not None}  # None: no decoder for the codec
    if not pending:
        return
    errors = 0
    for count, packet in enumerate(container.demux(*streams)):
        index = packet.stream.index
        if index in pending:
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                errors += 1
                logger.debug("decode error in stream %d: %s", index, exc.strerror)
                frames = []
            if frames:
                pending.discard(index)
                infos[index].decoded = True
                frame = frames[0]
                if isinstance(frame, VideoFrame):
                    infos[index].rotation = _rotation(frame)
                    infos[index].pixel_format = infos[index].pixel_format or frame.format.name
                elif isinstance(frame, AudioFrame):
                    infos[index].sample_rate = infos[index].sample_rate or frame.sample_rate
        if not pending or count >= MAX_PROBE_PACKETS:
            break
    if pending:
        logger.info("no frame decoded from streams %s (%d decode errors)", sorted(pending), errors)


def _rotation(frame: VideoFrame) -> int | None:
    try:
        return int(frame.rotation)
    except (AttributeError, ValueError, TypeError):
        return None


def _seconds(duration: int | None, stream: Stream) -> float | None:
    if duration is None or stream.time_base is None:
        return None
    return round(float(duration * stream.time_base), 6)


def _container_duration(container: InputContainer, streams: list[StreamInfo]) -> float | None:
    if container.duration is not None and container.duration > 0:
        return round(container.duration / av.time_base, 6)
    durations = [s.duration_s for s in streams if s.duration_s]
    return max(durations) if durations else None


def _tags(metadata: dict[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in list(metadata.items())[:_MAX_TAGS]:
        text = _clean_text(str(value))
        if text is not None:
            tags[str(key)[:64]] = text
    return tags


# --- HEIF ------------------------------------------------------------------------------------------


def _probe_heif(path: MediaSource, sniffed: SniffedType, size: int, max_pixels: int) -> MediaProbe:
    """HEIF/HEIC: ffmpeg decodes the coded image (or its first tile); the item boxes give size and EXIF."""
    label = _label(sniffed)
    try:
        meta = _read_heif_meta(path)
    except (struct.error, ValueError, IndexError, OSError) as exc:
        logger.info("unreadable HEIF item boxes: %s", exc)
        meta = None
    if meta is not None and meta.width and meta.height:
        _check_pixels((meta.width, meta.height), max_pixels)
    try:
        with open_container(path, sniffed) as container:
            streams = list(container.streams.video)
            if not streams:
                raise CorruptMedia(f"{label} could not be decoded: it holds no coded image.")
            infos = {s.index: _stream_info(s) for s in container.streams}
            first = streams[0]
            _decode_first_frames(container, [first], infos)
            if not infos[first.index].decoded:
                raise CorruptMedia(f"{label} could not be decoded: its image data does not decode.")
            first_info = infos[first.index]
            long_name, demuxer = container.format.long_name, container.format.name
    except _AV_ERRORS as exc:
        raise CorruptMedia(f"{label} could not be decoded: {_reason(exc, path)}") from exc
    width = (meta.width if meta else None) or first_info.width or 0
    height = (meta.height if meta else None) or first_info.height or 0
    _check_pixels((width, height), max_pixels)
    frames = first_info.frames if meta is None and first_info.frames else 1
    exif = _heif_exif(meta.exif) if meta is not None and meta.exif else {}
    return MediaProbe(
        kind=MediaKind.IMAGE,
        content_type=sniffed.content_type,
        format=sniffed.format,
        format_long_name=f"High Efficiency Image File Format ({long_name})",
        demuxer=demuxer,
        size_bytes=size,
        width=width,
        height=height,
        streams=[infos[i] for i in sorted(infos)],
        image=ImageInfo(
            format="HEIF",
            mode=first_info.pixel_format or "unknown",
            width=width,
            height=height,
            frames=frames,
            animated=frames > 1,
            exif=exif,
        ),
    )


def _heif_exif(blob: bytes) -> dict[str, str]:
    if len(blob) < 4:
        return {}
    start = 4 + struct.unpack(">I", blob[:4])[0]  # offset from the field's end to the TIFF header
    exif = Image.Exif()
    try:
        exif.load(blob[start:])
        return exif_to_dict(exif)
    except _PILLOW_ERRORS as exc:
        logger.warning("ignoring unreadable HEIF EXIF data: %s", exc)
        return {}


@dataclass(frozen=True)
class _HeifMeta:
    width: int | None
    height: int | None
    exif: bytes | None


_MAX_EXIF_BLOB = 4 * 1024 * 1024


def _read_heif_meta(path: MediaSource) -> _HeifMeta | None:
    """The primary item's size (its ``ispe`` property) and the EXIF item, from the top-level ``meta`` box."""
    with path.open() as f:
        meta = heif.MetaBox.read(f, path.size)
        if meta is None:
            return None
        primary = meta.primary_item()
        width = height = None
        if primary is not None:
            width, height = _primary_size(meta, primary)
        exif = None
        if b"iinf" in meta.children and b"iloc" in meta.children:
            exif_items = [item for item, kind in meta.item_types() if kind == b"Exif"]
            locations = {location.item: location for location in meta.locations()}
            if exif_items and exif_items[0] in locations:
                exif = heif.read_item(f, meta.idat(), locations[exif_items[0]], max_bytes=_MAX_EXIF_BLOB)
        return _HeifMeta(width, height, exif)


def _primary_size(meta: heif.MetaBox, primary: int) -> tuple[int | None, int | None]:
    """Width and height from the first ``ispe`` property of the primary item."""
    for kind, start, _end in meta.properties(primary):
        if kind == b"ispe":
            width, height = struct.unpack_from(">II", meta.data, start + 4)
            return int(width), int(height)
    return None, None


# --- shared ----------------------------------------------------------------------------------------


def _label(sniffed: SniffedType) -> str:
    return f"The {_DISPLAY_NAME.get(sniffed.format, sniffed.format + ' file')}"


def _reason(exc: BaseException, path: MediaSource) -> str:
    """A short, path-free reason for a decoder failure."""
    if isinstance(exc, av.FFmpegError):
        text = exc.strerror or type(exc).__name__
    elif isinstance(exc, UnidentifiedImageError):
        text = "the image data is not recognised"
    else:
        text = str(exc) or type(exc).__name__
    names = [path.name] + ([str(path.path.resolve())] if isinstance(path, LocalFile) else [])
    for p in names:
        text = text.replace(p, "<file>")
    return text[:200]
