"""Evidence items of a stored speakers result: one per turn, under its voice embedding's key, so that a voice
cluster's members, search hits and dossier citations name the same item."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from speakers_helpers import VOICE_A, VOICE_B, Samples, Voice, analyze, media_input, silence, write_wav

from aima.analysis import MediaKind
from aima_speakers.plugin import SpeakersAnalyzer
from aima_speakers.results import SpeakerSettings, SpeakersResult, SpeakerTurn

Say = Callable[[str, Voice], Samples]

LINES = [
    (VOICE_A, "I arrived around seven, alone. There were two men unloading boxes from a white van."),
    (VOICE_B, "Did you see the number plate of the van, or anything written on the boxes themselves?"),
    (VOICE_A, "No, it was too dark. But one of them had a red jacket and walked with a limp."),
]


def test_every_turn_is_citable_under_its_embedding_key(say: Say, analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    parts = [silence(0.5)]
    for voice, line in LINES:
        parts += [say(line, voice), silence(1.5)]
    output = analyze(analyzer, write_wav(tmp_path / "dialogue.wav", np.concatenate(parts)))
    result = output.result
    assert isinstance(result, SpeakersResult)

    items = analyzer.evidence("media-1", result.model_dump(mode="json"))
    assert [i.key for i in items] == [e.key for e in output.embeddings] == ["turn-1", "turn-2", "turn-3"]
    assert [i.summary for i in items] == ["S1 speaks", "S2 speaks", "S1 speaks"]
    assert [(i.start_s, i.end_s) for i in items] == [
        (e.fields["start_s"], e.fields["end_s"]) for e in output.embeddings
    ]
    assert [i.confidence for i in items] == [t.confidence for t in result.turns]
    assert all(i.confidence is not None and 0.8 < i.confidence <= 1.0 for i in items)
    assert {(i.media_id, i.analyzer, i.kind, i.keyframe, i.box) for i in items} == {
        ("media-1", "speakers", "speaker", None, None)
    }


def test_media_without_sound_offers_nothing(analyzer: SpeakersAnalyzer) -> None:
    output = analyzer.analyze_blocking(media_input(None, kind=MediaKind.VIDEO))
    assert analyzer.evidence("media-1", output.result.model_dump(mode="json")) == []


def result(*turns: SpeakerTurn) -> SpeakersResult:
    return SpeakersResult(
        speakers=[], turns=list(turns), duration_s=10.0, speech_s=5.0, model="m", settings=SpeakerSettings()
    )


def turn(number: int, confidence: float) -> SpeakerTurn:
    return SpeakerTurn(
        key=f"turn-{number}", start_s=number, end_s=number + 0.5, speaker="S2", confidence=confidence, window_count=1
    )


def test_confidences_stay_between_0_and_1() -> None:
    items = SpeakersAnalyzer().evidence("m", result(turn(1, 1.0000002), turn(2, -0.1)).model_dump(mode="json"))
    assert [(i.key, i.start_s, i.end_s, i.confidence) for i in items] == [
        ("turn-1", 1.0, 1.5, 1.0),
        ("turn-2", 2.0, 2.5, 0.0),
    ]


def test_a_result_of_another_shape_offers_nothing_instead_of_failing() -> None:
    analyzer = SpeakersAnalyzer()
    payload = result(turn(1, 0.9)).model_dump(mode="json")
    assert analyzer.evidence("m", {"segments": [{"speaker": "A", "start": 0.0, "end": 1.0}]}) == []
    assert analyzer.evidence("m", {**payload, "turns": [{"speaker": "S1", "start": 0.0, "end": 1.0}]}) == []
    # Settings of an older version do not hide the turns.
    older = {**payload, "settings": {"threshold": 0.7, "removed_option": 1}}
    assert [i.key for i in analyzer.evidence("m", older)] == ["turn-1"]


@pytest.mark.parametrize("payload", [{}, {"turns": None}, {"turns": "turn-1"}])
def test_payloads_without_turns_offer_nothing(payload: dict[str, object]) -> None:
    assert SpeakersAnalyzer().evidence("m", payload) == []
