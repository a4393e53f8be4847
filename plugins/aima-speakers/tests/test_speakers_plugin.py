"""The plugin as the core sees it: entry point, settings, startup check, inputs it must refuse or accept."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from speakers_helpers import analyze, media_input, write_wav
from speakers_signals import VOICES, synthetic_voice

from aima.analysis import MediaKind, ModelNotInstalled, Need
from aima.errors import CorruptMedia
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima_speakers.audio import read_wav
from aima_speakers.plugin import InvalidSpeakerSettings, SpeakersAnalyzer
from aima_speakers.results import SpeakerSettings, SpeakersResult


def test_the_entry_point_registers_the_analyzer_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "speakers")  # only this plugin, whatever else is installed
    config = {"speakers": {"threshold": "0.8", "max_speakers": "4"}}  # as AIMA_PLUGINS__SPEAKERS__* gives them
    registry = AnalyzerRegistry(create_plugin_manager(), config)
    analyzer = registry.get("speakers")
    assert isinstance(analyzer, SpeakersAnalyzer)
    assert analyzer.settings.threshold == 0.8 and analyzer.settings.max_speakers == 4
    assert analyzer.needs == {Need.AUDIO_TRACK}
    assert analyzer.media_kinds == {MediaKind.AUDIO, MediaKind.VIDEO}
    assert analyzer.result_model is SpeakersResult
    assert any(p.name == "speakers" and p.analyzers == ("speakers",) for p in registry.plugins())
    analyzer.check()  # the weights Resemblyzer ships are installed


def test_bad_settings_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "speakers")
    with pytest.raises(InvalidSpeakerSettings, match="threshold") as caught:
        AnalyzerRegistry(create_plugin_manager(), {"speakers": {"threshold": 2}})
    assert caught.value.code == "INVALID_PLUGIN_SETTINGS"
    with pytest.raises(InvalidSpeakerSettings, match="treshold"):
        AnalyzerRegistry(create_plugin_manager(), {"speakers": {"treshold": 0.5}})


def test_missing_weights_stop_the_worker_with_the_install_command(tmp_path: Path) -> None:
    analyzer = SpeakersAnalyzer(SpeakerSettings(weights_path=str(tmp_path / "missing.pt")))
    with pytest.raises(ModelNotInstalled, match=r"pip install --no-deps Resemblyzer==0\.1\.4"):
        analyzer.check()


def test_media_without_sound_has_no_speakers(analyzer: SpeakersAnalyzer) -> None:
    output = analyzer.analyze_blocking(media_input(None, kind=MediaKind.VIDEO))
    assert isinstance(output.result, SpeakersResult)
    assert output.result.speakers == [] and output.result.duration_s == 0.0
    assert list(output.embeddings) == []


def test_an_unreadable_track_is_corrupt_media(analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    path = tmp_path / "track.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(CorruptMedia):
        analyzer.analyze_blocking(media_input(path))


def test_other_pcm_layouts_are_converted(tmp_path: Path) -> None:
    voice = synthetic_voice(*VOICES["low"], seconds=1.0)
    reference = read_wav(write_wav(tmp_path / "mono.wav", voice))
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        pcm = (voice[::2] * 32767).astype(np.int16)
        out.writeframes(np.stack([pcm, pcm], axis=1).tobytes())
    converted = read_wav(stereo)
    assert abs(len(converted) - len(reference)) <= 1
    assert np.corrcoef(converted[:15000], reference[:15000])[0, 1] > 0.9


def test_the_result_says_how_it_was_made(analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", synthetic_voice(*VOICES["high"], seconds=1.0))
    result = analyze(analyzer, path).result
    assert isinstance(result, SpeakersResult)
    assert result.model.startswith("resemblyzer-0.1.4")
    assert result.settings == analyzer.settings
    assert result.duration_s == 1.0
