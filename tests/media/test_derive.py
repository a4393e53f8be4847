"""Derived files made from generated media: previews, keyframes (codec keyframes only) and the audio track."""

from __future__ import annotations

import inspect
import io
import itertools
import wave
from pathlib import Path

import av
import pytest
from PIL import ExifTags, Image

from aima.errors import CorruptMedia
from aima.media import derive
from aima.media.derive import KeyframeStats, NoAudioTrack
from aima.media.sniff import sniff_file
from aima.testing.media import (
    make_heic,
    make_heic_grid,
    make_jpeg,
    make_mp3,
    make_mp4,
    make_png,
    make_scene_video,
    make_wav,
    make_webm,
)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    image.load()
    return image


def key_packets(path: Path) -> tuple[int, int]:
    """Codec keyframes and all frames of the first video stream, counted from the packets."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    return sum(1 for p in packets if p.is_keyframe), len(packets)


def rgb_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    r, g, b = image.convert("RGB").getpixel(xy)  # type: ignore[misc]
    return int(r), int(g), int(b)


# --- previews ----------------------------------------------------------------------------------------


def test_a_thumbnail_is_a_small_upright_jpeg_without_metadata(tmp_path: Path) -> None:
    picture = Image.new("RGB", (1600, 800), (220, 20, 20))
    picture.paste((20, 20, 220), (800, 0, 1600, 800))  # left half red, right half blue
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90° clockwise
    exif[ExifTags.Base.Make] = "Camera"
    path = write(tmp_path, "turned.jpg", _save(picture, "JPEG", exif=exif))

    thumb = decoded(derive.thumbnail(path, sniff_file(path)))
    assert thumb.size == (256, 512)  # upright: portrait, longest side 512
    assert not thumb.getexif()
    top, bottom = rgb_at(thumb, (128, 10)), rgb_at(thumb, (128, 500))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # the left (red) half is now on top


def test_small_images_are_not_enlarged_and_transparency_goes_on_white(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png", make_png(64, 48, mode="RGBA"))
    thumb = decoded(derive.thumbnail(path, sniff_file(path)))
    assert thumb.size == (64, 48) and thumb.mode == "RGB"
    clear = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    path = write(tmp_path, "clear.png", _save(clear, "PNG"))
    assert min(rgb_at(decoded(derive.thumbnail(path, sniff_file(path))), (5, 5))) > 240


def test_a_heic_thumbnail_is_decoded_with_pyav(tmp_path: Path) -> None:
    path = write(tmp_path, "a.heic", make_heic(64, 48))
    assert decoded(derive.thumbnail(path, sniff_file(path))).size == (64, 48)


def test_a_poster_frame_is_a_jpeg_of_the_video(tmp_path: Path) -> None:
    path = write(tmp_path, "v.mp4", make_mp4(seconds=2.0, width=320, height=240, fps=10))
    poster = derive.poster_frame(path, sniff_file(path))
    assert decoded(poster.jpeg).size == (320, 240) == (poster.width, poster.height)
    assert 0.0 <= poster.timestamp_s < 2.0


def test_a_poster_skips_a_uniform_start(tmp_path: Path) -> None:
    # Solid colour scenes are all "uniform": the least uniform of the first keyframes is taken, never an error.
    path = write(tmp_path, "s.mp4", make_scene_video(3, 1.0, gop_seconds=0.5))
    assert decoded(derive.poster_frame(path, sniff_file(path)).jpeg).size == (160, 120)


# --- keyframes ---------------------------------------------------------------------------------------


def test_only_codec_keyframes_are_decoded_and_scene_changes_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "s.mp4", make_scene_video(4, 2.0, gop_seconds=0.5, fps=10))
    stats = KeyframeStats()
    frames = list(derive.keyframes(path, sniff_file(path), min_interval_s=0.5, stats=stats))

    keys, total = key_packets(path)
    assert (keys, total) == (16, 80)
    assert stats.frames_decoded == stats.keyframes_decoded == keys  # nothing but codec keyframes
    assert stats.dense_groups == 0
    assert [(f.timestamp_s, f.scene_change) for f in frames] == [(0.0, True), (2.0, True), (4.0, True), (6.0, True)]
    assert frames[0].score is None and all(f.score is not None and f.score > 0.3 for f in frames[1:])
    assert all(f.codec_keyframe for f in frames)
    for frame in frames:
        assert decoded(frame.jpeg).size == (160, 120) == (frame.width, frame.height)
    # The scenes are red, green, blue, yellow.
    colours = [rgb_at(decoded(f.jpeg), (5, 5)) for f in frames]
    assert [max(range(3), key=c.__getitem__) for c in colours[:3]] == [0, 1, 2]


def test_a_long_static_shot_is_sampled_at_a_fixed_rate(tmp_path: Path) -> None:
    path = write(tmp_path, "static.mp4", make_scene_video(1, 12.0, gop_seconds=1.0, audio=False))
    frames = list(derive.keyframes(path, sniff_file(path), max_gap_s=4.0))
    assert [(f.timestamp_s, f.scene_change) for f in frames] == [(0.0, True), (4.0, False), (8.0, False)]


def test_a_group_of_pictures_longer_than_the_gap_is_decoded_to_sample_it(tmp_path: Path) -> None:
    path = write(tmp_path, "long.mp4", make_scene_video(3, 4.0, gop_seconds=60.0, audio=False))
    assert key_packets(path)[0] == 1
    stats = KeyframeStats()
    frames = list(derive.keyframes(path, sniff_file(path), min_interval_s=1.0, max_gap_s=3.0, stats=stats))
    assert stats.dense_groups == 1 and stats.keyframes_decoded == 1
    scenes = [f.timestamp_s for f in frames if f.scene_change]
    assert scenes == [0.0, 4.0, 8.0]  # found at the 1 s sampling rate
    assert not frames[1].codec_keyframe
    assert all(b.timestamp_s - a.timestamp_s <= 3.0 for a, b in itertools.pairwise(frames))


def test_max_frames_bounds_the_output(tmp_path: Path) -> None:
    path = write(tmp_path, "s.mp4", make_scene_video(4, 1.0, gop_seconds=0.5, audio=False))
    frames = list(derive.keyframes(path, sniff_file(path), max_frames=2, min_interval_s=0.1))
    assert len(frames) == 2
    assert frames[1].timestamp_s >= 2.0  # spread over the duration (4 s / 2 frames), not the first two


def test_keyframes_of_other_containers_and_of_a_still_image(tmp_path: Path) -> None:
    webm = write(tmp_path, "v.webm", make_webm(seconds=1.0))
    assert len(list(derive.keyframes(webm, sniff_file(webm)))) == 1
    jpeg = write(tmp_path, "a.jpg", make_jpeg(2000, 1000))
    [still] = derive.keyframes(jpeg, sniff_file(jpeg), max_side=1000)
    assert (still.timestamp_s, still.scene_change, still.width, still.height) == (0.0, True, 1000, 500)


def test_a_broken_video_is_corrupt_media(tmp_path: Path) -> None:
    video = make_mp4(seconds=1.0)
    path = write(tmp_path, "broken.mp4", video[: len(video) // 3])
    sniffed = sniff_file(path)
    with pytest.raises(CorruptMedia) as caught:
        list(derive.keyframes(path, sniffed))
    assert str(tmp_path) not in caught.value.message


def test_every_pyav_open_goes_through_open_container() -> None:
    assert "av.open(" not in inspect.getsource(derive)


# --- audio -------------------------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as wav:
        return wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes() / wav.getframerate()


@pytest.mark.parametrize(
    ("name", "data", "seconds"),
    [
        ("v.mp4", make_scene_video(3, 1.0), 3.0),
        ("a.mp3", make_mp3(seconds=2.0, sample_rate=44_100, channels=2), 2.0),
        ("a.wav", make_wav(seconds=1.5, rate=8_000), 1.5),
    ],
)
def test_the_audio_track_is_16_khz_mono_pcm_of_the_same_length(
    tmp_path: Path, name: str, data: bytes, seconds: float
) -> None:
    path = write(tmp_path, name, data)
    out = tmp_path / "track.wav"
    info = derive.audio_track(path, sniff_file(path), out)
    rate, channels, width, duration = read_wav(out)
    assert (rate, channels, width) == (16_000, 1, 2)
    assert abs(duration - seconds) < 0.06, duration
    assert info.samples == round(duration * 16_000) and info.duration_s == pytest.approx(duration, abs=1e-3)
    with wave.open(str(out), "rb") as wav:
        samples = wav.readframes(wav.getnframes())
    assert max(abs(int.from_bytes(samples[i : i + 2], "little", signed=True)) for i in range(0, 32000, 2)) > 1000


def test_a_video_without_sound_has_no_audio_track(tmp_path: Path) -> None:
    path = write(tmp_path, "silent.mp4", make_mp4(seconds=1.0, audio=False))
    with pytest.raises(NoAudioTrack):
        derive.audio_track(path, sniff_file(path), tmp_path / "track.wav")


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def test_progress_is_reported_as_the_media_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "s.mp4", make_scene_video(3, 2.0, gop_seconds=0.5))
    seen: list[float] = []
    list(derive.keyframes(path, sniff_file(path), progress=seen.append))
    assert seen == sorted(seen) and len(seen) == 12 and 0.9 <= seen[-1] <= 1.0
    heard: list[float] = []
    derive.audio_track(path, sniff_file(path), tmp_path / "track.wav", progress=heard.append)
    assert heard == sorted(heard) and heard[-1] >= 0.95


@pytest.mark.parametrize(("rotation", "size"), [(0, (120, 90)), (1, (90, 120))])
def test_a_heic_grid_is_put_together_and_turned(tmp_path: Path, rotation: int, size: tuple[int, int]) -> None:
    path = write(tmp_path, "grid.heic", make_heic_grid(2, 2, tile=(64, 48), size=(120, 90), rotation=rotation))
    thumb = decoded(derive.thumbnail(path, sniff_file(path)))
    assert thumb.size == size
    # Tiles row by row: red, green / blue, yellow; a quarter turn counterclockwise brings green to the top left.
    corners = [(4, 4), (size[0] - 4, 4), (4, size[1] - 4), (size[0] - 4, size[1] - 4)]
    expected = {0: ["red", "green", "blue", "yellow"], 1: ["green", "yellow", "red", "blue"]}[rotation]
    assert [colour_name(rgb_at(thumb, xy)) for xy in corners] == expected


def test_a_large_heic_grid_is_scaled_tile_by_tile(tmp_path: Path) -> None:
    path = write(tmp_path, "grid.heic", make_heic_grid(4, 3, tile=(256, 256), size=(1000, 700)))
    [frame] = derive.keyframes(path, sniff_file(path), max_side=500)
    assert (frame.width, frame.height) == (500, 350)
    assert decoded(derive.thumbnail(path, sniff_file(path), max_side=100)).size == (100, 70)


def colour_name(rgb: tuple[int, int, int]) -> str:
    names = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 200), "yellow": (230, 220, 40)}
    return min(names, key=lambda n: sum((a - b) ** 2 for a, b in zip(names[n], rgb, strict=True)))
