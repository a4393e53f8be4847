"""Content sniffing: every allowlisted format from real bytes; everything else refused, saying what it is."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aima.analysis import MediaKind
from aima.errors import EmptyUpload, UnsupportedMedia
from aima.media.sniff import SNIFF_BYTES, SniffedType, sniff, sniff_file
from aima.testing import media

IMAGE, VIDEO, AUDIO = MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.AUDIO

GENERATED: list[tuple[str, Callable[[], bytes], SniffedType]] = [
    ("jpeg", media.make_jpeg, SniffedType(IMAGE, "image/jpeg", "jpeg")),
    ("jpeg-no-exif", lambda: media.make_jpeg(exif=False), SniffedType(IMAGE, "image/jpeg", "jpeg")),
    ("png", media.make_png, SniffedType(IMAGE, "image/png", "png")),
    ("gif", media.make_gif, SniffedType(IMAGE, "image/gif", "gif")),
    ("webp", media.make_webp, SniffedType(IMAGE, "image/webp", "webp")),
    ("webp-animated", lambda: media.make_webp(frames=3), SniffedType(IMAGE, "image/webp", "webp")),
    ("tiff", media.make_tiff, SniffedType(IMAGE, "image/tiff", "tiff")),
    ("heic", media.make_heic, SniffedType(IMAGE, "image/heic", "heic")),
    ("mp4", media.make_mp4, SniffedType(VIDEO, "video/mp4", "mp4")),
    # Provisional: an audio-only MP4 without the M4A brand looks like video until probed.
    ("mp4-audio-only", lambda: media.make_mp4(video=False), SniffedType(VIDEO, "video/mp4", "mp4")),
    ("mov", media.make_mov, SniffedType(VIDEO, "video/quicktime", "mov")),
    ("m4a", media.make_m4a, SniffedType(AUDIO, "audio/mp4", "m4a")),
    ("mkv", media.make_mkv, SniffedType(VIDEO, "video/x-matroska", "matroska")),
    ("mka", media.make_mka, SniffedType(VIDEO, "video/x-matroska", "matroska")),
    ("webm", media.make_webm, SniffedType(VIDEO, "video/webm", "webm")),
    ("avi", media.make_avi, SniffedType(VIDEO, "video/x-msvideo", "avi")),
    ("ogg-opus", media.make_ogg, SniffedType(AUDIO, "audio/ogg", "ogg")),
    ("mp3-id3", media.make_mp3, SniffedType(AUDIO, "audio/mpeg", "mp3")),
    ("mp3-bare", lambda: media.make_mp3(id3=False), SniffedType(AUDIO, "audio/mpeg", "mp3")),
    (
        "mp3-mono-22k",
        lambda: media.make_mp3(sample_rate=22_050, channels=1, id3=False),
        SniffedType(AUDIO, "audio/mpeg", "mp3"),
    ),
    ("flac", media.make_flac, SniffedType(AUDIO, "audio/flac", "flac")),
    ("aac", media.make_aac, SniffedType(AUDIO, "audio/aac", "aac")),
    ("wav", media.make_wav, SniffedType(AUDIO, "audio/wav", "wav")),
]


@pytest.mark.parametrize(("make", "expected"), [(m, e) for _, m, e in GENERATED], ids=[n for n, _, _ in GENERATED])
def test_generated_files_are_recognised(make: Callable[[], bytes], expected: SniffedType) -> None:
    data = make()
    found = sniff(data[:SNIFF_BYTES])
    assert found == expected
    assert sniff(data) == found  # more than SNIFF_BYTES changes nothing


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    payload = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(payload)) + b"ftyp" + payload + b"\x00\x00\x00\x08free"


def _ogg_page(first_packet: bytes) -> bytes:
    return b"OggS\x00\x02" + bytes(20) + b"\x01" + bytes([len(first_packet)]) + first_packet


def _ebml(doctype: bytes | None) -> bytes:
    body = b"\x42\x86\x81\x01"  # EBMLVersion 1
    if doctype is not None:
        body += b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(body)]) + body + b"\x18\x53\x80\x67"


def _riff(form: bytes, magic: bytes = b"RIFF") -> bytes:
    return magic + struct.pack("<I", 1000) + form + b"fmt " + bytes(20)


def _adts(count: int = 3) -> bytes:
    frame_length = 32
    header = bytes(
        [
            0xFF,
            0xF1,
            0x50,
            0x80 | (frame_length >> 11),
            (frame_length >> 3) & 0xFF,
            ((frame_length & 7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return (header + bytes(frame_length - 7)) * count


def _id3(size: int) -> bytes:
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + synchsafe + bytes(size)


MAGIC_SAMPLES: list[tuple[str, bytes, SniffedType]] = [
    ("jpeg-exif-app1", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00", SniffedType(IMAGE, "image/jpeg", "jpeg")),
    ("tiff-big-endian", b"MM\x00*\x00\x00\x00\x08", SniffedType(IMAGE, "image/tiff", "tiff")),
    ("bigtiff", b"II+\x00\x08\x00\x00\x00", SniffedType(IMAGE, "image/tiff", "tiff")),
    ("gif87a", b"GIF87a\x10\x00\x10\x00", SniffedType(IMAGE, "image/gif", "gif")),
    ("heic-heix", _ftyp(b"heix", b"mif1", b"heix"), SniffedType(IMAGE, "image/heic", "heic")),
    ("heif-mif1", _ftyp(b"mif1", b"mif1", b"miaf"), SniffedType(IMAGE, "image/heif", "heif")),
    ("heic-mif1-major", _ftyp(b"mif1", b"mif1", b"heic"), SniffedType(IMAGE, "image/heic", "heic")),
    ("heif-sequence", _ftyp(b"msf1", b"msf1", b"iso8"), SniffedType(IMAGE, "image/heif-sequence", "heif")),
    ("heic-sequence", _ftyp(b"hevc", b"msf1", b"hevc"), SniffedType(IMAGE, "image/heic-sequence", "heic")),
    ("mp4-isom", _ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), SniffedType(VIDEO, "video/mp4", "mp4")),
    ("mp4-mp42", _ftyp(b"mp42", b"mp42", b"isom"), SniffedType(VIDEO, "video/mp4", "mp4")),
    ("mp4-unknown-major", _ftyp(b"XYZ1", b"XYZ1", b"mp42"), SniffedType(VIDEO, "video/mp4", "mp4")),
    ("m4b-audiobook", _ftyp(b"M4B ", b"M4B ", b"mp42"), SniffedType(AUDIO, "audio/mp4", "m4a")),
    ("mov-qt", _ftyp(b"qt  ", b"qt  "), SniffedType(VIDEO, "video/quicktime", "mov")),
    ("3gp", _ftyp(b"3gp4", b"isom", b"3gp4"), SniffedType(VIDEO, "video/3gpp", "3gp")),
    ("3g2", _ftyp(b"3g2a", b"3g2a"), SniffedType(VIDEO, "video/3gpp2", "3g2")),
    (
        "quicktime-without-ftyp",
        b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat" + bytes(32),
        SniffedType(VIDEO, "video/quicktime", "mov"),
    ),
    ("matroska-doctype", _ebml(b"matroska"), SniffedType(VIDEO, "video/x-matroska", "matroska")),
    ("matroska-no-doctype", _ebml(None), SniffedType(VIDEO, "video/x-matroska", "matroska")),
    ("webm-doctype", _ebml(b"webm"), SniffedType(VIDEO, "video/webm", "webm")),
    ("avi", _riff(b"AVI "), SniffedType(VIDEO, "video/x-msvideo", "avi")),
    ("wav-rf64", _riff(b"WAVE", b"RF64"), SniffedType(AUDIO, "audio/wav", "wav")),
    ("webp", _riff(b"WEBP"), SniffedType(IMAGE, "image/webp", "webp")),
    ("ogg-vorbis", _ogg_page(b"\x01vorbis" + bytes(22)), SniffedType(AUDIO, "audio/ogg", "ogg")),
    ("ogg-opus", _ogg_page(b"OpusHead" + bytes(11)), SniffedType(AUDIO, "audio/ogg", "ogg")),
    ("ogg-theora", _ogg_page(b"\x80theora" + bytes(34)), SniffedType(VIDEO, "video/ogg", "ogg")),
    ("flac", b"fLaC\x00\x00\x00\x22" + bytes(34), SniffedType(AUDIO, "audio/flac", "flac")),
    ("aac-adts", _adts(), SniffedType(AUDIO, "audio/aac", "aac")),
    ("aac-behind-id3", _id3(100) + _adts(), SniffedType(AUDIO, "audio/aac", "aac")),
    ("flac-behind-id3", _id3(20) + b"fLaC" + bytes(40), SniffedType(AUDIO, "audio/flac", "flac")),
    ("mp3-long-id3", _id3(100_000)[:SNIFF_BYTES], SniffedType(AUDIO, "audio/mpeg", "mp3")),
]


@pytest.mark.parametrize(
    ("data", "expected"), [(d, e) for _, d, e in MAGIC_SAMPLES], ids=[n for n, _, _ in MAGIC_SAMPLES]
)
def test_magic_byte_samples_are_recognised(data: bytes, expected: SniffedType) -> None:
    assert sniff(data) == expected


REJECTED: list[tuple[str, bytes, str]] = [
    ("text", b"Hello, this is just a note.\nSecond line.\n", "Text files"),
    ("utf8-text", "Grüße aus Köln — ünïcödé\n".encode(), "Text files"),
    ("utf16-text", "\ufeffhello world".encode("utf-16-le"), "Text files"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF documents"),
    ("zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(30), "ZIP archives"),
    ("elf", b"\x7fELF\x02\x01\x01\x00" + bytes(56), "ELF executables"),
    ("windows-exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff", "Windows executables"),
    ("gzip", b"\x1f\x8b\x08\x00" + bytes(20), "gzip archives"),
    (
        "hls",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n",
        "HLS/M3U playlists",
    ),
    ("ffconcat", b"ffconcat version 1.0\nfile /etc/passwd\n", "FFmpeg concat scripts"),
    ("svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG images"),
    ("html", b"<!DOCTYPE html><html><body>hi</body></html>", "HTML documents"),
    ("avif", _ftyp(b"avif", b"avif", b"mif1", b"miaf"), "AVIF images"),
    ("avif-mif1-major", _ftyp(b"mif1", b"mif1", b"avif"), "AVIF images"),
    ("canon-cr3", _ftyp(b"crx ", b"crx ", b"isom"), "Canon CR3 raw images"),
    ("unknown-iso", _ftyp(b"zzzz", b"zzzz"), "ISO media files with brand 'zzzz'"),
    ("riff-other", _riff(b"CDXA"), "RIFF files of type 'CDXA'"),
    ("aiff", b"FORM\x00\x00\x10\x00AIFFCOMM", "AIFF audio files"),
    ("ebml-other", _ebml(b"mystery"), "EBML documents of type 'mystery'"),
    ("mpeg-ts", (b"\x47\x40\x00\x10" + bytes(184)) * 3, "MPEG transport streams"),
    ("bmp", b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54) + struct.pack("<I", 40) + bytes(36), "BMP images"),
    ("flv", b"FLV\x01\x05\x00\x00\x00\x09", "Flash video"),
    ("wmv", b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa", "Windows Media"),
    ("jpeg2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x14ftypjp2 ", "JPEG 2000 images"),
    ("binary-noise", bytes(range(256)) * 2, "Unrecognised file type"),
    ("zeros", bytes(100), "Unrecognised file type"),
]


@pytest.mark.parametrize(("data", "what"), [(d, w) for _, d, w in REJECTED], ids=[n for n, _, _ in REJECTED])
def test_other_content_is_refused_naming_what_it_is(data: bytes, what: str) -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        sniff(data)
    assert what in caught.value.message
    assert "Supported formats: images (JPEG" in caught.value.message
    assert caught.value.code == "UNSUPPORTED_MEDIA"


def test_empty_content_is_an_empty_upload() -> None:
    with pytest.raises(EmptyUpload):
        sniff(b"")


def test_a_truncated_header_is_refused_not_crashed() -> None:
    with pytest.raises(UnsupportedMedia):
        sniff(b"\x00\x00\x00\x20ftyp")


def test_the_filename_is_never_consulted(tmp_path: Path) -> None:
    photo_named_video = tmp_path / "holiday.mp4"
    photo_named_video.write_bytes(media.make_jpeg())
    assert sniff_file(photo_named_video).format == "jpeg"

    pdf_named_song = tmp_path / "song.mp3"
    pdf_named_song.write_bytes(b"%PDF-1.4\n")
    with pytest.raises(UnsupportedMedia, match="PDF documents"):
        sniff_file(pdf_named_song)

    no_extension = tmp_path / "upload"
    no_extension.write_bytes(media.make_wav())
    assert sniff_file(no_extension).format == "wav"


def test_sniff_file_looks_past_a_long_id3_tag(tmp_path: Path) -> None:
    """Cover art makes ID3 tags longer than SNIFF_BYTES; the file reader looks at what follows."""
    aac_with_big_tag = tmp_path / "a"
    aac_with_big_tag.write_bytes(_id3(50_000) + _adts())
    assert sniff(aac_with_big_tag.read_bytes()[:SNIFF_BYTES]).format == "mp3"  # all a header can tell
    assert sniff_file(aac_with_big_tag).format == "aac"

    mp3_with_big_tag = tmp_path / "b"
    mp3_with_big_tag.write_bytes(_id3(50_000) + media.make_mp3(id3=False))
    assert sniff_file(mp3_with_big_tag).format == "mp3"


def test_sniff_file_of_an_empty_file_is_an_empty_upload(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(EmptyUpload):
        sniff_file(empty)


_PREFIXES = [
    b"",
    b"\xff",
    b"\xff\xf1",
    b"\xff\xfb",
    b"ID3\x04\x00",
    b"\x1a\x45\xdf\xa3",
    b"OggS\x00",
    b"RIFF",
    b"FORM",
    b"\x00\x00\x00\x18ftyp",
    b"\x00\x00\x00\x08wide",
    b"\x00\x00\x01\x00",
    b"\xff\xfe",
    b"#EXTM3U",
]


def _outcome(data: bytes) -> SniffedType | None:
    try:
        found = sniff(data)
    except (UnsupportedMedia, EmptyUpload):
        return None
    assert isinstance(found, SniffedType)
    assert isinstance(found.kind, MediaKind)
    assert "/" in found.content_type and found.format
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=SNIFF_BYTES + 64))
def test_random_bytes_give_a_type_or_a_media_error(data: bytes) -> None:
    _outcome(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_PREFIXES), st.binary(max_size=600))
def test_random_bytes_behind_real_magic_give_a_type_or_a_media_error(prefix: bytes, tail: bytes) -> None:
    _outcome(prefix + tail)
