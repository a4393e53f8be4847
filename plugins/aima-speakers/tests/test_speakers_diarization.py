"""Diarization: windows, clustering and turns, then on espeak-ng voices end to end."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from speakers_helpers import VOICE_A, VOICE_B, Samples, Voice, analyze, silence, write_wav

from aima_speakers.audio import SpeechRegion
from aima_speakers.diarization import cluster, cut_windows, merge_turns
from aima_speakers.plugin import SpeakersAnalyzer
from aima_speakers.results import SpeakersResult

Say = Callable[[str, Voice], Samples]
RATE = 16000

DIALOGUE = [
    (VOICE_A, "Good morning, I would like to report what I saw at the harbour yesterday evening."),
    (VOICE_B, "Of course. Please tell me exactly what time you arrived there and who was with you."),
    (VOICE_A, "I arrived around seven, alone. There were two men unloading boxes from a white van."),
    (VOICE_B, "Did you see the number plate of the van, or anything written on the boxes themselves?"),
    (VOICE_A, "No, it was too dark. But one of them had a red jacket and walked with a limp."),
]


def test_windows_cover_each_region_without_gaps_or_overlaps() -> None:
    regions = [SpeechRegion(0, 5 * RATE), SpeechRegion(6 * RATE, 7 * RATE), SpeechRegion(8 * RATE, 8 * RATE + 4000)]
    windows = cut_windows(regions, window_s=1.6, min_segment_s=0.5)
    first = [w for w in windows if w.start < 5 * RATE]
    assert all(w.end - w.start == round(1.6 * RATE) for w in first)
    assert first[0].own_start == 0 and first[-1].own_end == first[-1].end == 5 * RATE
    assert all(a.own_end == b.own_start for a, b in itertools.pairwise(first))
    assert all(w.start <= w.own_start < w.own_end <= w.end for w in first)
    short = [w for w in windows if w.start >= 6 * RATE]
    assert [(w.start, w.end) for w in short] == [(6 * RATE, 7 * RATE)]  # one window; the 0.25 s region is dropped


def test_clustering_finds_the_number_of_speakers() -> None:
    rng = np.random.default_rng(7)
    centres = rng.random((3, 256)).astype(np.float32) ** 4
    vectors = np.concatenate([c + 0.05 * rng.random((4, 256), dtype=np.float32) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(vectors))
    labels = cluster(vectors[order], threshold=0.7, max_speakers=10)
    truth = np.repeat(np.arange(3), 4)[order]
    assert len(set(labels.tolist())) == 3
    assert all(len(set(truth[labels == k].tolist())) == 1 for k in range(3))
    firsts = [labels.tolist().index(k) for k in range(3)]
    assert firsts == sorted(firsts)  # numbered in order of first speech
    assert set(cluster(vectors, threshold=0.7, max_speakers=2).tolist()) == {0, 1}
    sampled = cluster(vectors[order], threshold=0.7, max_speakers=10, max_tree=6)  # a tree on 6, the rest join
    assert sampled.tolist() == labels.tolist()
    assert cluster(vectors[:1], 0.7, 10).tolist() == [0]


def test_turns_join_windows_of_one_speaker_until_a_long_pause() -> None:
    regions = [SpeechRegion(0, 4 * RATE), SpeechRegion(4 * RATE + 8000, 6 * RATE), SpeechRegion(9 * RATE, 10 * RATE)]
    windows = cut_windows(regions, window_s=1.6, min_segment_s=0.5)
    speakers = np.zeros(len(windows), dtype=np.int64)
    turns = merge_turns(windows, speakers, max_gap_s=1.0)
    assert [(t.start_s, t.end_s) for t in turns] == [(0.0, 6.0), (9.0, 10.0)]
    speakers[2:] = 1
    turns = merge_turns(windows, speakers, max_gap_s=1.0)
    assert [t.speaker for t in turns] == [0, 1, 1]
    assert turns[0].end_s == turns[1].start_s


def _dialogue(say: Say, tmp_path: Path) -> tuple[Path, list[tuple[float, float, Voice]]]:
    parts: list[Samples] = [silence(0.3)]
    truth = []
    t = 0.3
    for voice, line in DIALOGUE:
        speech = say(line, voice)
        truth.append((t, t + len(speech) / RATE, voice))
        parts += [speech, silence(0.7)]
        t += len(speech) / RATE + 0.7
    return write_wav(tmp_path / "dialogue.wav", np.concatenate(parts)), truth


def test_two_voices_in_turns_are_two_speakers(say: Say, analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    path, truth = _dialogue(say, tmp_path)
    output = analyze(analyzer, path)
    result = output.result
    assert isinstance(result, SpeakersResult)
    assert [s.label for s in result.speakers] == ["S1", "S2"]
    assert [t.speaker for t in result.turns] == ["S1", "S2", "S1", "S2", "S1"]
    for turn, (start, end, _) in zip(result.turns, truth, strict=True):
        assert turn.start_s == pytest.approx(start, abs=0.4)
        assert turn.end_s == pytest.approx(end, abs=0.4)
        assert turn.confidence > 0.8
    s1, s2 = result.speakers
    assert (s1.turn_count, s2.turn_count) == (3, 2)
    assert s1.total_speech_s == pytest.approx(sum(e - s for s, e, v in truth if v == VOICE_A), abs=1.0)
    assert [e.key for e in output.embeddings] == [t.key for t in result.turns] == [f"turn-{n}" for n in range(1, 6)]
    embedding = output.embeddings[1]
    assert embedding.collection == "voice_embeddings" and len(embedding.vector) == 256
    assert float(np.linalg.norm(embedding.vector)) == pytest.approx(1.0, abs=1e-5)
    assert dict(embedding.fields) == {
        "start_s": result.turns[1].start_s,
        "end_s": result.turns[1].end_s,
        "speaker": "S2",
    }


def test_three_voices_two_of_them_male_are_three_speakers(say: Say, analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    voices = [VOICE_A, VOICE_B, ("en-gb+m1", 50, 160)]
    lines = [
        "Where were you on the night of the fourteenth, just after the match ended?",
        "I was at home with my sister, we watched a film and went to bed early.",
        "That is not what the neighbour told us when we spoke to him this morning.",
        "The neighbour is confused, he always mixes up the days of the week.",
        "Then explain why your car was seen near the warehouse at eleven o'clock.",
        "Honestly, I lent the car to a friend that evening, I can give you his name.",
    ]
    parts: list[Samples] = []
    for n, line in enumerate(lines):
        parts += [say(line, voices[n % 3]), silence(0.6)]
    result = analyze(analyzer, write_wav(tmp_path / "three.wav", np.concatenate(parts))).result
    assert isinstance(result, SpeakersResult)
    assert [t.speaker for t in result.turns] == ["S1", "S2", "S3", "S1", "S2", "S3"]


def test_one_voice_in_two_files_is_close_and_two_voices_are_not(
    say: Say, analyzer: SpeakersAnalyzer, tmp_path: Path
) -> None:
    texts = [
        "The weather report said there would be rain over the northern hills by the afternoon.",
        "My brother bought a second hand bicycle and rode it all the way to the coast last summer.",
    ]
    vectors = {}
    for voice in (VOICE_A, VOICE_B):
        for n, text in enumerate(texts):
            path = write_wav(tmp_path / f"{voice[0]}-{n}.wav", np.concatenate([silence(0.5), say(text, voice)]))
            output = analyze(analyzer, path)
            assert len(output.embeddings) == 1, "one speaker, one turn"
            vectors[voice, n] = np.asarray(output.embeddings[0].vector)
    threshold = analyzer.settings.threshold
    for voice in (VOICE_A, VOICE_B):
        assert float(vectors[voice, 0] @ vectors[voice, 1]) > threshold
    for n, m in ((0, 1), (1, 0), (0, 0)):
        assert float(vectors[VOICE_A, n] @ vectors[VOICE_B, m]) < threshold


def test_silence_has_no_speakers(analyzer: SpeakersAnalyzer, tmp_path: Path) -> None:
    hum = 0.001 * np.sin(2 * np.pi * 50 * np.arange(5 * RATE) / RATE).astype(np.float32)
    for samples in (silence(5.0), hum):
        output = analyze(analyzer, write_wav(tmp_path / "quiet.wav", samples))
        result = output.result
        assert isinstance(result, SpeakersResult)
        assert (result.speakers, result.turns, list(output.embeddings)) == ([], [], [])
        assert result.duration_s == 5.0 and result.speech_s == 0.0


def test_a_minute_of_speech_runs_far_faster_than_real_time(
    say: Say, analyzer: SpeakersAnalyzer, tmp_path: Path
) -> None:
    parts: list[Samples] = []
    while sum(len(p) for p in parts) < 60 * RATE:
        for voice, line in DIALOGUE:
            parts += [say(line, voice), silence(0.5)]
    samples = np.concatenate(parts)[: 60 * RATE]
    path = write_wav(tmp_path / "minute.wav", samples)
    analyze(analyzer, path)  # the encoder is loaded before timing
    started = time.perf_counter()
    result = analyze(analyzer, path).result
    elapsed = time.perf_counter() - started
    assert isinstance(result, SpeakersResult)
    print(f"speakers: 60 s of speech in {elapsed:.2f} s, real-time factor {elapsed / 60:.3f}")
    assert len(result.speakers) == 2
    assert elapsed / 60 < 0.25
