"""Probing real files: facts, kind refinement, corrupt input, decompression bombs and ffmpeg playlists."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aima.analysis import MediaKind
from aima.errors import AimaError, CorruptMedia, EmptyUpload, UnsupportedMedia
from aima.media.probe import MediaProbe, open_container, probe_file
from aima.media.sniff import SniffedType, sniff
from aima.testing import media


def _write(tmp_path: Path, data: bytes, name: str = "upload") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _json_round_trip(probe: MediaProbe) -> None:
    dumped = probe.model_dump(mode="json")
    assert MediaProbe.model_validate(json.loads(json.dumps(dumped))) == probe


# --- images ------------------------------------------------------------------------------------------------


def test_jpeg_with_exif_and_gps(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_jpeg(64, 48)))
    assert (probe.kind, probe.content_type, probe.format) == (MediaKind.IMAGE, "image/jpeg", "jpeg")
    assert (probe.width, probe.height) == (64, 48)
    assert probe.streams == [] and probe.duration_s is None
    assert probe.image is not None
    assert (probe.image.format, probe.image.mode, probe.image.frames) == ("JPEG", "RGB", 1)
    exif = probe.image.exif
    assert exif["Make"] == media.EXIF_MAKE
    assert exif["Model"] == media.EXIF_MODEL
    assert exif["DateTimeOriginal"] == media.EXIF_DATETIME
    assert exif["GPSInfo.GPSLatitudeRef"] == "N"
    assert exif["GPSInfo.GPSLatitude"] == "52, 31, 12.5"
    assert exif["GPSInfo.GPSLongitude"] == "13, 24, 0"
    assert all(isinstance(v, str) and v for v in exif.values())
    assert "ExifOffset" not in exif and "GPSInfo" not in exif  # pointers are flattened, not shown
    _json_round_trip(probe)


def test_jpeg_without_exif(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_jpeg(exif=False)))
    assert probe.image is not None and probe.image.exif == {}


def test_png(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_png(32, 20, mode="RGBA")))
    assert (probe.kind, probe.format, probe.width, probe.height) == (MediaKind.IMAGE, "png", 32, 20)
    assert probe.image is not None
    assert (probe.image.mode, probe.image.animated) == ("RGBA", False)


def test_png_exif_is_read(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_png(exif=True)))
    assert probe.image is not None and probe.image.exif["Make"] == media.EXIF_MAKE


@pytest.mark.parametrize(
    ("make", "fmt", "frames"),
    [
        (lambda: media.make_gif(frames=3), "GIF", 3),
        (lambda: media.make_webp(frames=1), "WEBP", 1),
        (lambda: media.make_webp(frames=2), "WEBP", 2),
        (media.make_tiff, "TIFF", 1),
    ],
    ids=["gif-animated", "webp", "webp-animated", "tiff"],
)
def test_other_images(tmp_path: Path, make: Callable[[], bytes], fmt: str, frames: int) -> None:
    probe = probe_file(_write(tmp_path, make()))
    assert probe.kind == MediaKind.IMAGE
    assert (probe.width, probe.height) == (64, 48)
    assert probe.image is not None
    assert (probe.image.format, probe.image.frames, probe.image.animated) == (fmt, frames, frames > 1)


def test_heic_size_and_exif_come_from_its_items(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_heic(64, 48)))
    assert (probe.kind, probe.content_type, probe.format) == (MediaKind.IMAGE, "image/heic", "heic")
    assert (probe.width, probe.height) == (64, 48)
    assert probe.image is not None
    assert probe.image.format == "HEIF"
    assert probe.image.exif["Make"] == media.EXIF_MAKE
    assert probe.image.exif["GPSInfo.GPSLatitudeRef"] == "N"
    assert probe.streams[0].codec == "hevc" and probe.streams[0].decoded is True
    _json_round_trip(probe)


# --- video and audio ---------------------------------------------------------------------------------------


def test_mp4_with_video_and_audio(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_mp4(seconds=1.0, width=160, height=120, fps=10)))
    assert (probe.kind, probe.content_type, probe.format) == (MediaKind.VIDEO, "video/mp4", "mp4")
    assert (probe.width, probe.height) == (160, 120)
    assert probe.frame_rate == pytest.approx(10.0)
    assert probe.duration_s == pytest.approx(1.0, abs=0.2)
    assert (probe.audio_channels, probe.audio_sample_rate) == (2, 48_000)
    assert probe.demuxer is not None and "mov" in probe.demuxer.split(",")
    assert probe.format_long_name
    assert probe.bit_rate and probe.bit_rate > 0
    assert probe.size_bytes == (tmp_path / "upload").stat().st_size
    video, audio = probe.streams
    assert (video.type, video.codec, video.width, video.height) == ("video", "h264", 160, 120)
    assert video.pixel_format == "yuv420p" and video.frames == 10 and video.decoded is True
    assert (audio.type, audio.codec, audio.channels, audio.channel_layout) == ("audio", "aac", 2, "stereo")
    assert audio.sample_rate == 48_000 and audio.decoded is True
    assert probe.image is None
    _json_round_trip(probe)


@pytest.mark.parametrize(
    ("make", "fmt", "content_type"),
    [
        (media.make_mov, "mov", "video/quicktime"),
        (media.make_mkv, "matroska", "video/x-matroska"),
        (media.make_webm, "webm", "video/webm"),
        (media.make_avi, "avi", "video/x-msvideo"),
    ],
    ids=["mov", "mkv", "webm", "avi"],
)
def test_other_video_containers(tmp_path: Path, make: Callable[[], bytes], fmt: str, content_type: str) -> None:
    probe = probe_file(_write(tmp_path, make()))
    assert (probe.kind, probe.format, probe.content_type) == (MediaKind.VIDEO, fmt, content_type)
    assert (probe.width, probe.height) == (160, 120)
    assert probe.frame_rate == pytest.approx(10.0)
    assert probe.duration_s == pytest.approx(1.0, abs=0.2)
    assert probe.audio_channels in (1, 2)


def test_wav_is_audio(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_wav(seconds=1.0, rate=16_000)))
    assert (probe.kind, probe.content_type, probe.format) == (MediaKind.AUDIO, "audio/wav", "wav")
    assert (probe.audio_channels, probe.audio_sample_rate) == (1, 16_000)
    assert probe.duration_s == pytest.approx(1.0, abs=0.2)
    assert probe.width is None and probe.frame_rate is None
    assert probe.streams[0].codec == "pcm_s16le"


def test_audio_only_mp4_is_refined_to_audio(tmp_path: Path) -> None:
    data = media.make_mp4(video=False, sample_rate=44_100, channels=1)
    assert sniff(data).kind == MediaKind.VIDEO  # all the header can tell
    probe = probe_file(_write(tmp_path, data))
    assert (probe.kind, probe.content_type, probe.format) == (MediaKind.AUDIO, "audio/mp4", "mp4")
    assert (probe.audio_channels, probe.audio_sample_rate) == (1, 44_100)
    assert probe.duration_s == pytest.approx(1.0, abs=0.2)


def test_audio_only_webm_is_refined_to_audio(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_webm(video=False)))
    assert (probe.kind, probe.content_type) == (MediaKind.AUDIO, "audio/webm")
    assert probe.streams[0].codec == "opus"


def test_cover_art_does_not_make_audio_a_video(tmp_path: Path) -> None:
    probe = probe_file(_write(tmp_path, media.make_mka(cover_art=True)))
    assert (probe.kind, probe.content_type) == (MediaKind.AUDIO, "audio/x-matroska")
    cover = [s for s in probe.streams if s.type == "video"]
    assert len(cover) == 1 and cover[0].attached_pic
    assert probe.width is None and probe.frame_rate is None


@pytest.mark.parametrize(
    ("make", "fmt", "codec", "rate"),
    [
        (media.make_m4a, "m4a", "aac", 44_100),
        (media.make_mp3, "mp3", "mp3", 44_100),
        (media.make_flac, "flac", "flac", 44_100),
        (media.make_aac, "aac", "aac", 44_100),
        (media.make_ogg, "ogg", "opus", 48_000),
    ],
    ids=["m4a", "mp3", "flac", "aac", "ogg-opus"],
)
def test_audio_formats(tmp_path: Path, make: Callable[[], bytes], fmt: str, codec: str, rate: int) -> None:
    probe = probe_file(_write(tmp_path, make()))
    assert (probe.kind, probe.format) == (MediaKind.AUDIO, fmt)
    assert probe.audio_sample_rate == rate and probe.audio_channels == 2
    assert probe.streams[0].codec == codec and probe.streams[0].decoded is True
    assert probe.duration_s == pytest.approx(1.0, abs=0.2)


# --- corrupt input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: media.make_jpeg(320, 240), lambda: media.make_png(320, 240), lambda: media.make_heic(320, 240)],
    ids=["jpeg", "png", "heic"],
)
def test_truncated_images_are_corrupt(tmp_path: Path, make: Callable[[], bytes]) -> None:
    data = make()
    path = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(CorruptMedia, match="could not be decoded") as caught:
        probe_file(path)
    assert str(tmp_path) not in caught.value.message  # no server paths in user-facing messages


def test_a_jpeg_header_followed_by_garbage_is_corrupt(tmp_path: Path) -> None:
    path = _write(tmp_path, media.make_jpeg()[:200] + bytes(range(256)) * 8)
    with pytest.raises(CorruptMedia, match=r"^The JPEG image could not be decoded: "):
        probe_file(path)


def test_truncated_mp4_is_corrupt(tmp_path: Path) -> None:
    data = media.make_mp4()
    path = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(CorruptMedia, match=r"^The MP4 file could not be decoded: ") as caught:
        probe_file(path)
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize(
    "make", [media.make_mkv, media.make_wav, media.make_mp3, media.make_ogg], ids=["mkv", "wav", "mp3", "ogg"]
)
def test_header_only_av_files_are_corrupt(tmp_path: Path, make: Callable[[], bytes]) -> None:
    data = make()
    sniffed = sniff(data)
    path = _write(tmp_path, data[:40])  # the first header and no media data
    with pytest.raises(CorruptMedia):
        probe_file(path, sniffed)


_FUZZ_SEEDS = ["jpeg", "png", "gif", "webp", "tiff", "heic", "mp4", "mkv", "webm", "avi", "ogg", "mp3", "wav"]


@cache
def _seed(name: str) -> bytes:
    make: Callable[[], bytes] = getattr(media, f"make_{name}")
    return make()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(_FUZZ_SEEDS),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.999), st.integers(0, 255)), max_size=30),
)
def test_damaged_files_give_a_probe_or_a_media_error(name: str, cut: float, flips: list[tuple[float, int]]) -> None:
    """Truncated and bit-flipped real files: decoders fail only with CorruptMedia or UnsupportedMedia."""
    data = bytearray(_seed(name))
    for where, value in flips:
        data[int(where * len(data))] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 0.95 else data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; not what this test is about
            try:
                probe = probe_file(path)
            except (CorruptMedia, UnsupportedMedia, EmptyUpload):
                return
    assert isinstance(probe, MediaProbe)
    json.dumps(probe.model_dump(mode="json"))


# --- decompression bombs -----------------------------------------------------------------------------------


def test_decompression_bomb_png_is_refused(tmp_path: Path) -> None:
    data = media.make_png_bomb(20_000, 20_000)
    assert len(data) < 200_000  # small on disk, 400 megapixels decoded
    path = _write(tmp_path, data)
    filters_before = list(warnings.filters)
    with pytest.raises(UnsupportedMedia, match="too large"):
        probe_file(path)
    assert warnings.filters == filters_before  # the warnings filter was scoped to the call


def test_pillow_bomb_warning_is_an_error_not_a_warning(tmp_path: Path) -> None:
    """10000x10000 is under our 200 MP default but over Pillow's warning threshold: it must not pass."""
    path = _write(tmp_path, media.make_png_bomb(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping probe_file fails the test
        with pytest.raises(UnsupportedMedia, match="too large"):
            probe_file(path)


def test_pixel_limit_parameter(tmp_path: Path) -> None:
    path = _write(tmp_path, media.make_jpeg(64, 48))
    with pytest.raises(UnsupportedMedia, match=r"64x48 pixels .* limit of 0.001 megapixels"):
        probe_file(path, max_pixels=1000)
    assert probe_file(path, max_pixels=64 * 48).width == 64

    heic = _write(tmp_path, media.make_heic(64, 48), "photo.heic")
    with pytest.raises(UnsupportedMedia, match="limit"):
        probe_file(heic, max_pixels=1000)


# --- ffmpeg playlists and other references to other files --------------------------------------------------

_FORCED_AV_TYPES = [
    SniffedType(MediaKind.VIDEO, "video/mp4", "mp4"),
    SniffedType(MediaKind.VIDEO, "video/x-matroska", "matroska"),
    SniffedType(MediaKind.VIDEO, "video/x-msvideo", "avi"),
    SniffedType(MediaKind.AUDIO, "audio/wav", "wav"),
    SniffedType(MediaKind.AUDIO, "audio/mpeg", "mp3"),
    SniffedType(MediaKind.AUDIO, "audio/flac", "flac"),
    SniffedType(MediaKind.AUDIO, "audio/ogg", "ogg"),
    SniffedType(MediaKind.AUDIO, "audio/aac", "aac"),
    SniffedType(MediaKind.IMAGE, "image/heic", "heic"),
]

HLS_PASSWD = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXTINF:10.0,\n/etc/passwd\n"
FFCONCAT_PASSWD = "ffconcat version 1.0\nfile /etc/passwd\nfile 'file:/etc/passwd'\n"


@pytest.fixture
def playlists(tmp_path: Path) -> dict[str, Path]:
    """Playlists naming /etc/passwd, and ones naming a real video next to them (which ffmpeg would play)."""
    (tmp_path / "segment.ts").write_bytes(media.make_mpegts())
    files = {
        "hls-passwd": HLS_PASSWD + "#EXT-X-ENDLIST\n",
        "ffconcat-passwd": FFCONCAT_PASSWD,
        "hls-local": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nsegment.ts\n#EXT-X-ENDLIST\n",
        "ffconcat-local": "ffconcat version 1.0\nfile segment.ts\n",
    }
    paths = {}
    for name, text in files.items():
        # Real extensions: ffmpeg's HLS prober insists on one, and only content counts for us anyway.
        paths[name] = tmp_path / (name + (".m3u8" if name.startswith("hls") else ".ffconcat"))
        paths[name].write_text(text)
    return paths


def test_plain_pyav_would_follow_a_playlist(playlists: dict[str, Path]) -> None:
    """The control: without the restrictions, ffmpeg reads the file a playlist names."""
    for name in ("hls-local", "ffconcat-local"):
        with av.open(str(playlists[name])) as container:
            assert container.format.name in ("hls", "concat")
            assert sum(packet.size for packet in container.demux()) > 0


@pytest.mark.parametrize("name", ["hls-passwd", "ffconcat-passwd", "hls-local", "ffconcat-local"])
def test_playlists_are_refused_by_sniffing(playlists: dict[str, Path], name: str) -> None:
    with pytest.raises(UnsupportedMedia, match=r"HLS/M3U playlists|FFmpeg concat scripts"):
        probe_file(playlists[name])


@pytest.mark.parametrize("name", ["hls-passwd", "ffconcat-passwd", "hls-local", "ffconcat-local"])
@pytest.mark.parametrize("forced", _FORCED_AV_TYPES, ids=[t.format for t in _FORCED_AV_TYPES])
def test_playlists_cannot_be_probed_even_when_forced(
    playlists: dict[str, Path], name: str, forced: SniffedType
) -> None:
    with pytest.raises(AimaError) as caught:
        probe_file(playlists[name], forced)
    assert isinstance(caught.value, CorruptMedia | UnsupportedMedia)
    assert "passwd" not in caught.value.message and "root:" not in caught.value.message


@pytest.mark.parametrize("name", ["hls-passwd", "ffconcat-passwd", "hls-local", "ffconcat-local"])
def test_open_container_refuses_playlist_demuxers(playlists: dict[str, Path], name: str) -> None:
    """Without a forced format ffmpeg would pick the hls or concat demuxer; the whitelist refuses it."""
    with pytest.raises(av.FFmpegError):
        open_container(playlists[name]).close()


def test_open_container_still_opens_real_media(tmp_path: Path) -> None:
    path = _write(tmp_path, media.make_mp4())
    with open_container(path) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    with open_container(path, sniff(path.read_bytes())) as container:
        assert "mov" in container.format.name.split(",")


def test_mpeg_ts_is_not_allowed(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMedia, match="MPEG transport streams"):
        probe_file(_write(tmp_path, media.make_mpegts()))
