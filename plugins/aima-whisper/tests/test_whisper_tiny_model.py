"""A multilingual model built by the test: language detection and the shape of the result (its words are noise)."""

from __future__ import annotations

from pathlib import Path

import pytest
from whisper_test_audio import audio_item, voiced, write_wav
from whisper_tiny_model import LANGUAGES

from aima.analysis import AnalysisOutput
from aima_whisper import Transcript, WhisperAnalyzer, WhisperSettings

DURATION_S = 3.0


@pytest.fixture(scope="module")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("voice") / "voice.wav", voiced(DURATION_S))


def transcribe(
    model_dir: Path, wav: Path, progress: list[tuple[float, str]] | None = None, **settings: object
) -> tuple[Transcript, AnalysisOutput]:
    analyzer = WhisperAnalyzer(WhisperSettings.model_validate({"model": str(model_dir), **settings}))
    output = analyzer.analyze_blocking(audio_item(wav, progress=progress))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, Transcript)
    return output.result, output


def assert_well_formed(transcript: Transcript, output: AnalysisOutput) -> None:
    assert [s.id for s in transcript.segments] == list(range(len(transcript.segments)))
    for segment in transcript.segments:
        assert segment.text and 0 <= segment.start_s <= segment.end_s <= transcript.duration_s
        assert segment.avg_logprob <= 0 and 0 <= segment.no_speech_prob <= 1 and segment.compression_ratio >= 0
        assert all(
            0 <= w.start_s <= w.end_s <= transcript.duration_s and 0 <= w.probability <= 1 for w in segment.words
        )
    assert transcript.text == " ".join(s.text for s in transcript.segments)
    assert [(t.key, t.text, t.start_s, t.end_s) for t in output.texts] == [
        (f"segment-{s.id}", s.text, s.start_s, s.end_s) for s in transcript.segments
    ]
    assert all(t.fields["language"] == transcript.language for t in output.texts)
    assert Transcript.model_validate_json(transcript.model_dump_json()) == transcript


def test_the_tiny_model_is_small_and_multilingual(tiny_model_dir: Path) -> None:
    assert sum(f.stat().st_size for f in tiny_model_dir.iterdir()) < 1_000_000
    model = WhisperAnalyzer(WhisperSettings(model=str(tiny_model_dir))).model()
    assert model.model.is_multilingual
    assert set(model.supported_languages) >= set(LANGUAGES)


def test_detects_the_language_and_fills_the_transcript(tiny_model_dir: Path, voice_wav: Path) -> None:
    """Default settings: VAD, the batched pipeline, beam search, word timestamps."""
    transcript, output = transcribe(tiny_model_dir, voice_wav)

    assert transcript.language in LANGUAGES
    candidates = transcript.language_candidates
    assert len(candidates) == 5 and candidates[0].language == transcript.language
    assert transcript.language_probability == candidates[0].probability
    assert [c.probability for c in candidates] == sorted((c.probability for c in candidates), reverse=True)
    assert all(c.language in LANGUAGES and 0 < c.probability <= 1 for c in candidates)
    assert transcript.duration_s == DURATION_S and 0 < transcript.speech_duration_s <= DURATION_S
    assert transcript.model == str(tiny_model_dir) and transcript.settings.model == str(tiny_model_dir)
    assert transcript.settings.batched and transcript.settings.compute_type == "int8"
    assert transcript.segments, "the noise model says something about speech-like sound"
    # Noise weights: with timestamps decoded, a segment may be all timestamps and hold no words.
    assert_well_formed(transcript, output)

    again, _ = transcribe(tiny_model_dir, voice_wav)
    assert again == transcript  # beam search without sampling: the same audio gives the same transcript


def test_a_configured_language_skips_detection(tiny_model_dir: Path, voice_wav: Path) -> None:
    transcript, output = transcribe(tiny_model_dir, voice_wav, language="de", word_timestamps=False)

    assert transcript.language == "de" and transcript.language_probability == 1.0
    assert transcript.language_candidates == []
    assert all(s.words == [] for s in transcript.segments)
    assert_well_formed(transcript, output)


def test_sequential_decoding_keeps_the_structure(tiny_model_dir: Path, voice_wav: Path) -> None:
    """batch_size 1: faster-whisper's sequential path, whose temperature fallback samples, so only the shape of its
    result is certain with a model of noise."""
    progress: list[tuple[float, str]] = []
    transcript, output = transcribe(tiny_model_dir, voice_wav, progress, batch_size=1, beam_size=1)

    assert not transcript.settings.batched and transcript.language in LANGUAGES
    assert_well_formed(transcript, output)
    fractions = [f for f, _ in progress]  # steady even when the noise model's timestamps jump back
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
