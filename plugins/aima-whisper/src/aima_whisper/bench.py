"""What a benchmark needs to compare the whisper analyzer with faster-whisper used directly, fairly.

Both sides share one loaded model (loading is not timed) and get the same `WhisperAnalyzer.transcribe_kwargs`; the
raw side is what a faster-whisper user writes: ``transcribe(path, **kwargs)`` on the same WAV, decoding it with
faster-whisper's own PyAV decoder, and reading every segment. The analyzer's side is `analyze_blocking` on an
`AnalysisInput` for that WAV, so it includes reading the file, progress reports and building the result. Runs
alternate (raw, analyzer, raw, ...) after one warm-up of each, and the medians are compared.

Run it as ``python -m aima_whisper.bench clip.wav [repeats]``; it prints the figures as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aima.analysis import AnalysisInput, AnalysisOutput, MediaKind
from aima_whisper.analyzer import WhisperAnalyzer
from aima_whisper.audio import read_audio
from aima_whisper.results import Transcript
from aima_whisper.settings import WhisperSettings


@dataclass(frozen=True)
class BenchFigures:
    audio_s: float
    #: Median seconds of faster-whisper alone, and of the analyzer, per transcription.
    raw_s: float
    analyzer_s: float
    #: analyzer_s / raw_s: the analyzer's overhead (1.0 is none).
    ratio: float
    #: analyzer_s / audio_s: below 1 the analyzer transcribes faster than real time.
    real_time_factor: float
    repeats: int
    #: The exact arguments both sides passed to faster-whisper, and the resolved settings.
    transcribe_kwargs: dict[str, Any]
    settings: dict[str, Any]
    raw_text: str
    analyzer_text: str


def audio_input(wav: Path, *, kind: MediaKind = MediaKind.AUDIO) -> AnalysisInput:
    """An `AnalysisInput` whose prepared audio track is `wav`, as a worker would hand it over."""
    return AnalysisInput(
        media_id="bench",
        case_id="bench",
        kind=kind,
        content_type="audio/wav",
        size_bytes=wav.stat().st_size,
        sha256="",
        original_path=wav,
        audio_track_path=wav,
    )


def raw_transcription(analyzer: WhisperAnalyzer, wav: Path) -> Callable[[], str]:
    """faster-whisper on its own, with the analyzer's model and exactly its arguments."""
    kwargs = analyzer.transcribe_kwargs()

    def run() -> str:
        segments, _ = analyzer.transcriber().transcribe(str(wav), **kwargs)
        return " ".join(segment.text.strip() for segment in segments)

    return run


def analyzer_transcription(analyzer: WhisperAnalyzer, wav: Path) -> Callable[[], str]:
    item = audio_input(wav)

    def run() -> str:
        output = analyzer.analyze_blocking(item)
        assert isinstance(output, AnalysisOutput) and isinstance(output.result, Transcript)
        return output.result.text

    return run


def compare_with_raw(wav: Path, settings: WhisperSettings | None = None, *, repeats: int = 3) -> BenchFigures:
    """Time the analyzer against faster-whisper alone on `wav` with the same settings (see the module's doc)."""
    analyzer = WhisperAnalyzer(settings)
    analyzer.model()
    raw, ours = raw_transcription(analyzer, wav), analyzer_transcription(analyzer, wav)
    raw_text, analyzer_text = raw(), ours()
    raw_times: list[float] = []
    our_times: list[float] = []
    for _ in range(repeats):
        raw_times.append(_timed(raw))
        our_times.append(_timed(ours))
    raw_s, analyzer_s = statistics.median(raw_times), statistics.median(our_times)
    audio_s = len(read_audio(wav)) / 16_000
    return BenchFigures(
        audio_s=round(audio_s, 3),
        raw_s=round(raw_s, 4),
        analyzer_s=round(analyzer_s, 4),
        ratio=round(analyzer_s / raw_s, 4),
        real_time_factor=round(analyzer_s / audio_s, 4),
        repeats=repeats,
        transcribe_kwargs=analyzer.transcribe_kwargs(),
        settings=analyzer.resolved_settings().model_dump(),
        raw_text=raw_text,
        analyzer_text=analyzer_text,
    )


def _timed(run: Callable[[], str]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m aima_whisper.bench CLIP.wav [REPEATS]")
    figures = compare_with_raw(Path(args[0]), repeats=int(args[1]) if len(args) > 1 else 3)
    sys.stdout.write(json.dumps(asdict(figures), indent=2) + "\n")


if __name__ == "__main__":
    main()
