"""Content sniffing: decide from a file's first bytes whether it is an allowed image, video or audio format.

Only the content is consulted, never the filename or a client-supplied content type. Anything outside the
allowlist raises `UnsupportedMedia` naming what was recognised, so a PDF or a playlist never reaches a
decoder.

For containers that may hold either video or audio (MP4, Matroska/WebM, Ogg, AVI) the kind found here is
provisional; `aima.media.probe.probe_file` refines it from the streams it finds.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aima.analysis import MediaKind
from aima.errors import EmptyUpload, UnsupportedMedia

logger = logging.getLogger(__name__)

#: How many leading bytes `sniff` looks at; callers should pass at least this much when the file is longer.
SNIFF_BYTES = 4096

#: Human-readable allowlist, used in error messages.
SUPPORTED_DESCRIPTION = (
    "Supported formats: images (JPEG, PNG, WebP, GIF, TIFF, HEIC/HEIF), "
    "video (MP4, MOV, 3GP, MKV, WebM, AVI, Ogg) and audio (MP3, WAV, FLAC, AAC, M4A, Ogg/Opus)."
)


@dataclass(frozen=True)
class SniffedType:
    """What the leading bytes say a file is."""

    kind: MediaKind
    #: MIME type, e.g. ``image/jpeg``.
    content_type: str
    #: Short format name: jpeg, png, webp, gif, tiff, heic, heif, mp4, m4a, mov, 3gp, 3g2, matroska, webm,
    #: avi, wav, mp3, flac, ogg, aac.
    format: str


def _unsupported(what: str | None) -> UnsupportedMedia:
    if what is None:
        return UnsupportedMedia(
            f"Unrecognised file type: not an allowed image, video or audio file. {SUPPORTED_DESCRIPTION}"
        )
    return UnsupportedMedia(f"{what} are not supported. {SUPPORTED_DESCRIPTION}")


def sniff(head: bytes) -> SniffedType:
    """Identify the media type of content from its first bytes (ideally `SNIFF_BYTES` of them).

    Raises `EmptyUpload` for empty content and `UnsupportedMedia` for anything not on the allowlist.
    """
    if not head:
        raise EmptyUpload()
    head = bytes(head[:SNIFF_BYTES])
    for check in _CHECKS:
        found = check(head)
        if found is not None:
            return found
    raise _unsupported(_describe_unsupported(head))


def read_head(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """The first `size` bytes of a file."""
    with path.open("rb") as f:
        return f.read(size)


def sniff_file(path: Path) -> SniffedType:
    """`sniff` a file on disk. Looks past a long ID3 tag, which `sniff` alone cannot see beyond."""
    with path.open("rb") as f:
        return sniff_stream(f)


def sniff_stream(f: BinaryIO) -> SniffedType:
    """`sniff` a seekable file from its start, looking past a long ID3 tag."""
    head = f.read(SNIFF_BYTES)
    found = sniff(head)
    tag_end = _id3_end(head)
    if tag_end is not None and tag_end + 4 > len(head):
        f.seek(tag_end)
        inner = _after_id3(f.read(SNIFF_BYTES))
        if inner is not None:
            return inner
    return found


# --- images ----------------------------------------------------------------------------------------


def _image(fmt: str, content_type: str) -> SniffedType:
    return SniffedType(MediaKind.IMAGE, content_type, fmt)


def _check_simple_images(h: bytes) -> SniffedType | None:
    if h.startswith(b"\xff\xd8\xff"):
        return _image("jpeg", "image/jpeg")
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return _image("png", "image/png")
    if h.startswith((b"GIF87a", b"GIF89a")):
        return _image("gif", "image/gif")
    if h.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return _image("tiff", "image/tiff")
    return None


# --- RIFF: WebP, WAV, AVI --------------------------------------------------------------------------


def _check_riff(h: bytes) -> SniffedType | None:
    if len(h) < 12:
        return None
    form = h[8:12]
    if h.startswith(b"RIFF"):
        if form == b"WEBP":
            return _image("webp", "image/webp")
        if form == b"AVI ":
            return SniffedType(MediaKind.VIDEO, "video/x-msvideo", "avi")
    if h.startswith((b"RIFF", b"RF64", b"BW64")) and form == b"WAVE":
        return SniffedType(MediaKind.AUDIO, "audio/wav", "wav")
    return None


# --- ISO base media (MP4, MOV, 3GP, HEIF) ----------------------------------------------------------

_HEIC_STILL = frozenset({b"heic", b"heix", b"heim", b"heis"})
_HEIC_SEQUENCE = frozenset({b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF = frozenset({b"avif", b"avis"})
_M4A = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
_MP4_BRANDS = b"isomiso2iso3iso4iso5iso6iso7iso8iso9mp41mp42avc1dashM4V M4VHM4VPMSNVNDASXAVCf4v f4p mmp4caqvnvr1FACE"
_MP4 = frozenset(_MP4_BRANDS[i : i + 4] for i in range(0, len(_MP4_BRANDS), 4))
_OTHER_ISO = {
    b"crx ": "Canon CR3 raw images",
    b"jp2 ": "JPEG 2000 images",
    b"jpx ": "JPEG 2000 images",
    b"jpm ": "JPEG 2000 images",
    b"mjp2": "Motion JPEG 2000 files",
    b"jxl ": "JPEG XL images",
    b"qt  ": None,
}


def _ftyp_brands(h: bytes) -> list[bytes] | None:
    if len(h) < 12 or h[4:8] != b"ftyp":
        return None
    size = struct.unpack(">I", h[:4])[0]
    if size < 12:
        return None
    brands = [h[8:12]]
    end = min(size, len(h))
    brands.extend(h[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _classify_brand(brand: bytes, compatible: list[bytes]) -> SniffedType | None:
    if brand in _HEIC_STILL:
        return _image("heic", "image/heic")
    if brand in _HEIC_SEQUENCE:
        return _image("heic", "image/heic-sequence")
    if brand in (b"mif1", b"msf1"):
        sequence = brand == b"msf1"
        if any(b in _HEIC_STILL or b in _HEIC_SEQUENCE for b in compatible):
            return _image("heic", "image/heic-sequence" if sequence else "image/heic")
        return _image("heif", "image/heif-sequence" if sequence else "image/heif")
    if brand in _M4A:
        return SniffedType(MediaKind.AUDIO, "audio/mp4", "m4a")
    if brand == b"qt  ":
        return SniffedType(MediaKind.VIDEO, "video/quicktime", "mov")
    if brand.startswith((b"3gp", b"3ge", b"3gg", b"3gs", b"3gr")):
        return SniffedType(MediaKind.VIDEO, "video/3gpp", "3gp")
    if brand.startswith(b"3g2") or brand == b"kddi":
        return SniffedType(MediaKind.VIDEO, "video/3gpp2", "3g2")
    if brand in _MP4:
        return SniffedType(MediaKind.VIDEO, "video/mp4", "mp4")
    return None


def _check_iso_bmff(h: bytes) -> SniffedType | None:
    brands = _ftyp_brands(h)
    if brands is None:
        return _check_quicktime_without_ftyp(h)
    major, compatible = brands[0], brands[1:]
    if major in _AVIF or (major in (b"mif1", b"msf1") and any(b in _AVIF for b in compatible)):
        raise _unsupported("AVIF images")
    found = _classify_brand(major, compatible)
    if found is not None:
        return found
    if major in _OTHER_ISO:
        raise _unsupported(_OTHER_ISO[major])
    for brand in compatible:
        if brand in _AVIF:
            raise _unsupported("AVIF images")
        found = _classify_brand(brand, compatible)
        if found is not None:
            return found
    raise _unsupported(f"ISO media files with brand {_printable(major)!r}")


_QT_LEADING_ATOMS = frozenset({b"wide", b"free", b"skip", b"pnot", b"junk"})


def _check_quicktime_without_ftyp(h: bytes) -> SniffedType | None:
    """Old QuickTime files start straight with atoms; accept them once a moov or mdat atom shows up."""
    pos = 0
    for _ in range(8):
        if pos + 8 > len(h):
            return None
        size = struct.unpack(">I", h[pos : pos + 4])[0]
        kind = h[pos + 4 : pos + 8]
        if kind in (b"moov", b"mdat") and (size >= 8 or size in (0, 1)):
            return SniffedType(MediaKind.VIDEO, "video/quicktime", "mov")
        if kind not in _QT_LEADING_ATOMS or size < 8:
            return None
        pos += size
    return None


# --- EBML: Matroska, WebM --------------------------------------------------------------------------


def _vint(h: bytes, pos: int, *, keep_marker: bool = False) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, length in bytes)."""
    if pos >= len(h) or h[pos] == 0:
        return None
    first = h[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(h):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for b in h[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, length


def _ebml_doctype(h: bytes) -> str | None:
    header_size = _vint(h, 4)
    if header_size is None:
        return None
    pos = 4 + header_size[1]
    end = min(len(h), pos + header_size[0])
    while pos < end:
        element = _vint(h, pos, keep_marker=True)
        if element is None:
            return None
        pos += element[1]
        size = _vint(h, pos)
        if size is None:
            return None
        pos += size[1]
        if element[0] == 0x4282:
            return h[pos : pos + size[0]].rstrip(b"\x00").decode("ascii", "replace")
        pos += size[0]
    return None


def _check_ebml(h: bytes) -> SniffedType | None:
    if not h.startswith(b"\x1a\x45\xdf\xa3"):
        return None
    doctype = _ebml_doctype(h)
    if doctype == "webm":
        return SniffedType(MediaKind.VIDEO, "video/webm", "webm")
    if doctype in (None, "matroska"):  # DocType defaults to "matroska" when absent
        return SniffedType(MediaKind.VIDEO, "video/x-matroska", "matroska")
    raise _unsupported(f"EBML documents of type {_printable(doctype.encode())!r}")


# --- Ogg -------------------------------------------------------------------------------------------

_OGG_AUDIO_HEADERS = (b"OpusHead", b"\x01vorbis", b"\x7fFLAC", b"Speex   ", b"PCM     ")
_OGG_VIDEO_HEADERS = (b"\x80theora", b"\x80daala", b"\x01video\x00\x00\x00", b"fishead\x00")


def _check_ogg(h: bytes) -> SniffedType | None:
    if not h.startswith(b"OggS\x00") or len(h) < 27:
        return None
    payload = h[27 + h[26] :]
    if payload.startswith(_OGG_VIDEO_HEADERS):
        return SniffedType(MediaKind.VIDEO, "video/ogg", "ogg")
    # Audio codecs, and anything unrecognised: Ogg is overwhelmingly audio; the probe corrects it.
    return SniffedType(MediaKind.AUDIO, "audio/ogg", "ogg")


# --- Elementary audio: FLAC, MP3, AAC --------------------------------------------------------------

_MPEG_BITRATES = {
    (3, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (3, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (3, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame_length(h: bytes, pos: int) -> int | None:
    """Length of the MPEG audio frame whose header starts at `pos`, or None if there is no valid header."""
    if pos + 4 > len(h) or h[pos] != 0xFF or h[pos + 1] & 0xE0 != 0xE0:
        return None
    version = (h[pos + 1] >> 3) & 3  # 0: MPEG 2.5, 1: reserved, 2: MPEG 2, 3: MPEG 1
    layer = (h[pos + 1] >> 1) & 3  # 0: reserved, 1: III, 2: II, 3: I
    bitrate_index = h[pos + 2] >> 4
    rate_index = (h[pos + 2] >> 2) & 3
    padding = (h[pos + 2] >> 1) & 1
    if version == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MPEG_BITRATES[(3 if version == 3 else 2, layer)][bitrate_index] * 1000
    rate = _MPEG_SAMPLE_RATES[version][rate_index]
    if layer == 3:
        return (12 * bitrate // rate + padding) * 4
    if layer == 1 and version != 3:
        return 72 * bitrate // rate + padding
    return 144 * bitrate // rate + padding


def _adts_frame_length(h: bytes, pos: int) -> int | None:
    if pos + 7 > len(h) or h[pos] != 0xFF or h[pos + 1] & 0xF6 != 0xF0:
        return None
    if (h[pos + 2] >> 2) & 0x0F > 12:  # sampling frequency index
        return None
    length = ((h[pos + 3] & 0x03) << 11) | (h[pos + 4] << 3) | (h[pos + 5] >> 5)
    return length if length >= 7 else None


def _frames_chain(h: bytes, frame_length: Callable[[bytes, int], int | None]) -> bool:
    """A valid frame header at 0 and another where it says the next frame starts (or the data ends there).

    Frames are at most a few kilobytes long, so `SNIFF_BYTES` always reach the second header of a real file;
    one header alone is four bytes that much binary data and even UTF-16 text can match.
    """
    length = frame_length(h, 0)
    if length is None:
        return False
    if length == len(h):
        return True
    return frame_length(h, length) is not None


def _check_audio_payload(h: bytes) -> SniffedType | None:
    if h.startswith(b"fLaC"):
        return SniffedType(MediaKind.AUDIO, "audio/flac", "flac")
    if _frames_chain(h, _adts_frame_length):
        return SniffedType(MediaKind.AUDIO, "audio/aac", "aac")
    if _frames_chain(h, _mpeg_frame_length):
        return SniffedType(MediaKind.AUDIO, "audio/mpeg", "mp3")
    return None


def _id3_end(h: bytes) -> int | None:
    """Where the audio after a leading ID3v2 tag starts, or None without a valid tag."""
    if len(h) < 10 or not h.startswith(b"ID3") or h[3] not in (2, 3, 4) or h[4] == 0xFF:
        return None
    if any(b & 0x80 for b in h[6:10]):  # the size is "synchsafe": 7 bits a byte
        return None
    size = (h[6] << 21) | (h[7] << 14) | (h[8] << 7) | h[9]
    footer = 10 if h[5] & 0x10 else 0
    return 10 + size + footer


def _after_id3(payload: bytes) -> SniffedType | None:
    # Some encoders pad with zeros after the tag.
    stripped = payload.lstrip(b"\x00")
    return _check_audio_payload(stripped) if stripped else None


def _check_id3(h: bytes) -> SniffedType | None:
    end = _id3_end(h)
    if end is None:
        return None
    if end < len(h):
        inner = _after_id3(h[end:])
        if inner is not None:
            return inner
    # The tag is longer than what we can see (cover art) or is followed by something odd: ID3 means MP3.
    return SniffedType(MediaKind.AUDIO, "audio/mpeg", "mp3")


_CHECKS: tuple[Callable[[bytes], SniffedType | None], ...] = (
    _check_simple_images,
    _check_riff,
    _check_iso_bmff,
    _check_ebml,
    _check_ogg,
    _check_id3,
    _check_audio_payload,
)


# --- naming what we reject -------------------------------------------------------------------------

_REJECTED_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF documents"),
    (b"PK\x03\x04", "ZIP archives (and Office/OpenDocument files)"),
    (b"PK\x05\x06", "ZIP archives"),
    (b"PK\x07\x08", "ZIP archives"),
    (b"\x7fELF", "ELF executables"),
    (b"\xfe\xed\xfa\xce", "Mach-O executables"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executables"),
    (b"\xce\xfa\xed\xfe", "Mach-O executables"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executables"),
    (b"\xca\xfe\xba\xbe", "Java class files and Mach-O executables"),
    (b"\x1f\x8b", "gzip archives"),
    (b"BZh", "bzip2 archives"),
    (b"\xfd7zXZ\x00", "xz archives"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archives"),
    (b"Rar!\x1a\x07", "RAR archives"),
    (b"\x28\xb5\x2f\xfd", "Zstandard archives"),
    (b"SQLite format 3\x00", "SQLite databases"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Legacy Microsoft Office documents"),
    (b"{\\rtf", "RTF documents"),
    (b"8BPS", "Photoshop documents"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 images"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 images"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL images"),
    (b"\xff\x0a", "JPEG XL images"),
    (b"qoif", "QOI images"),
    (b"\x00\x00\x01\xba", "MPEG program streams (MPG/VOB)"),
    (b"\x00\x00\x01\xb3", "MPEG video elementary streams"),
    (b"FLV\x01", "Flash video (FLV) files"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "Windows Media (ASF/WMV/WMA) files"),
    (b".RMF", "RealMedia files"),
    (b"#!AMR", "AMR audio files"),
    (b"MThd", "MIDI files"),
    (b"caff", "Core Audio (CAF) files"),
    (b"wvpk", "WavPack audio files"),
    (b"MAC ", "Monkey's Audio files"),
    (b"\x00\x00\x01\x00", "Windows icons"),
    (b"OggS", "Ogg files with an unknown layout"),
)

_REJECTED_TEXT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("#EXTM3U", "HLS/M3U playlists"),
    ("ffconcat version", "FFmpeg concat scripts"),
    ("WEBVTT", "Subtitle files"),
    ("<!doctype html", "HTML documents"),
    ("<html", "HTML documents"),
)


def _describe_unsupported(h: bytes) -> str | None:
    if h.startswith(b"RIFF") and len(h) >= 12:
        return f"RIFF files of type {_printable(h[8:12])!r}"
    if h.startswith(b"FORM") and len(h) >= 12:
        return "AIFF audio files" if h[8:12] in (b"AIFF", b"AIFC") else "IFF files"
    for prefix, what in _REJECTED_PREFIXES:
        if h.startswith(prefix):
            return what
    if len(h) >= 265 and h[257:262] == b"ustar":
        return "tar archives"
    if len(h) >= 132 and h[128:132] == b"DICM":
        return "DICOM files"
    if len(h) >= 377 and h[0] == h[188] == h[376] == 0x47:
        return "MPEG transport streams (TS/MTS)"
    if len(h) >= 389 and h[4] == h[196] == h[388] == 0x47:
        return "MPEG transport streams (M2TS)"
    if h.startswith(b"BM") and len(h) >= 18 and h[14] in (12, 40, 52, 56, 64, 108, 124) and not any(h[15:18]):
        return "BMP images"
    text = _as_text(h)
    if text is not None:
        lowered = text.lstrip("\ufeff \t\r\n").lower()
        for text_prefix, what in _REJECTED_TEXT_PREFIXES:
            if lowered.startswith(text_prefix.lower()):
                return what
        if "<svg" in lowered and lowered.startswith(("<?xml", "<svg", "<!--", "<!doctype svg")):
            return "SVG images"
        return "Text files"
    if h.startswith(b"MZ"):
        return "Windows executables"
    return None


def _as_text(h: bytes) -> str | None:
    """The content as text if it looks like text (UTF-8 or UTF-16 with a byte-order mark), else None."""
    candidates: list[tuple[bytes, str]] = []
    if h.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates.append((h[: len(h) - len(h) % 2], "utf-16"))
    candidates.append((h, "utf-8"))
    for data, encoding in candidates:
        for cut in range(4):  # a multi-byte character may be split at the end of the sniffed bytes
            try:
                text = data[: len(data) - cut].decode(encoding)
            except UnicodeDecodeError:
                continue
            if text and all(c.isprintable() or c in "\t\n\r\f\v\ufeff" for c in text):
                return text
            break
    return None


def _printable(raw: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)
