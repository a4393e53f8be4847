"""The plugin as the core sees it: found through its entry point with its settings, a missing pack stops the worker
at startup with how to install it, and an unreadable keyframe fails the task with a clear, permanent error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faces_support import ItemFactory, KeyframeWriter

from aima.analysis import Keyframe, MediaKind, ModelNotInstalled, Need
from aima.errors import AimaError, CorruptMedia
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima_faces.analyzer import FacesAnalyzer
from aima_faces.engine import FacePackInvalid
from aima_faces.settings import FaceSettings, FaceSettingsInvalid, load_settings


def test_the_entry_point_registers_the_analyzer_with_its_settings(
    tiny_pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "faces")
    config = {"faces": {"pack_dir": str(tiny_pack), "det_size": "512", "providers": "CPUExecutionProvider"}}
    registry = AnalyzerRegistry(create_plugin_manager(), config)
    analyzer = registry.get("faces")
    assert isinstance(analyzer, FacesAnalyzer)
    assert analyzer.settings.pack_dir == tiny_pack and analyzer.settings.det_size == 512
    assert analyzer.needs == frozenset({Need.KEYFRAMES}) and analyzer.runs_on == "cpu"
    assert analyzer.accepts(MediaKind.VIDEO) and analyzer.accepts(MediaKind.IMAGE)
    assert not analyzer.accepts(MediaKind.AUDIO)
    assert "faces" in [info.name for info in registry.plugins()]
    analyzer.check()


def test_check_names_what_is_missing_and_how_to_install_it(tmp_path: Path, tiny_pack: Path) -> None:
    missing = tmp_path / "models" / "buffalo_l"
    with pytest.raises(ModelNotInstalled) as raised:
        FacesAnalyzer(FaceSettings(pack_dir=missing)).check()
    message = str(raised.value)
    assert str(missing) in message and "does not exist" in message
    assert f"install it with: insightface-cli model.download buffalo_l --root {tmp_path}" in message

    detector_only = tmp_path / "detector-only"
    detector_only.mkdir()
    (detector_only / "det_tiny.onnx").write_bytes((tiny_pack / "det_tiny.onnx").read_bytes())
    with pytest.raises(ModelNotInstalled, match="recognition"):
        FacesAnalyzer(FaceSettings(pack_dir=detector_only)).check()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotInstalled, match=r"no \.onnx model"):
        FacesAnalyzer(FaceSettings(pack_dir=empty)).check()

    FacesAnalyzer(FaceSettings()).check()  # no pack configured: nothing is missing


def test_a_pack_that_does_not_load_is_a_permanent_error(
    tmp_path: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "det.onnx").write_bytes(b"not a model")
    (broken / "rec.onnx").write_bytes(b"not a model either")
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=broken))
    analyzer.check()  # files are there; only loading tells that they are not models
    with pytest.raises(FacePackInvalid) as raised:
        analyzer.analyze_blocking(item([keyframe(np.zeros((64, 64, 3), np.uint8), 0.0)]))
    assert raised.value.code == "FACE_PACK_INVALID" and not raised.value.transient
    assert str(broken) in raised.value.message


def test_a_corrupt_keyframe_is_corrupt_media(tmp_path: Path, keyframe: KeyframeWriter, item: ItemFactory) -> None:
    good = keyframe(np.zeros((64, 64, 3), np.uint8), 0.0)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    bad = Keyframe(corrupt, 12.5, scene_change=False)
    with pytest.raises(CorruptMedia) as raised:
        FacesAnalyzer(FaceSettings()).analyze_blocking(item([good, bad]))
    assert raised.value.code == "CORRUPT_MEDIA" and not raised.value.transient
    assert "keyframe 1 at 12.50 s (corrupt.jpg)" in raised.value.message

    gone = Keyframe(tmp_path / "gone.jpg", 0.0, scene_change=True)
    with pytest.raises(CorruptMedia, match="could not read keyframe 0"):
        FacesAnalyzer(FaceSettings()).analyze_blocking(item([gone]))


def test_bad_settings_are_a_clear_user_error(tiny_pack: Path) -> None:
    with pytest.raises(FaceSettingsInvalid, match='detector "pack" needs pack_dir'):
        load_settings({"faces": {"detector": "pack"}})
    with pytest.raises(FaceSettingsInvalid, match="det_size") as raised:
        load_settings({"faces": {"det_size": 650}})
    assert isinstance(raised.value, AimaError) and raised.value.code == "PLUGIN_CONFIG_INVALID"
    with pytest.raises(FaceSettingsInvalid, match="pack_path"):
        load_settings({"faces": {"pack_path": str(tiny_pack)}})
    settings = load_settings(
        {"faces": {"pack_dir": str(tiny_pack), "providers": "CUDAExecutionProvider, CPUExecutionProvider"}}
    )
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider") and settings.uses_pack_detector
    assert not load_settings({}).uses_pack_detector
