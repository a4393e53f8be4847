"""The whisper analyzer: the media's audio track to a timed, searchable transcript, with faster-whisper."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    EvidenceItem,
    LazyModel,
    MediaKind,
    Need,
    SearchableText,
    stored_items,
)
from aima_whisper.audio import read_audio
from aima_whisper.results import LanguageGuess, Transcript, TranscriptSegment, TranscriptWord
from aima_whisper.settings import WhisperSettings, resolve_model_dir

if TYPE_CHECKING:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

logger = logging.getLogger(__name__)

#: How many detected languages a transcript lists beside the chosen one.
LANGUAGE_CANDIDATES = 5
#: What `evidence` reads of a stored transcript: only the segments, so that a transcript stored with settings of an
#: older version still offers its segments.
_SEGMENTS = TypeAdapter(list[TranscriptSegment])
NO_AUDIO_NOTE = "The media has no audio track; there is nothing to transcribe."
EMPTY_AUDIO_NOTE = "The audio track holds no samples; there is nothing to transcribe."


class WhisperAnalyzer(BlockingAnalyzer):
    name = "whisper"
    version = "1.0.0"
    description = (
        "Speech to text with OpenAI Whisper (faster-whisper, CTranslate2): language detection, timed segments with "
        "confidences, per-word timestamps; segments are indexed for search."
    )
    media_kinds = frozenset({MediaKind.AUDIO, MediaKind.VIDEO})
    needs = frozenset({Need.AUDIO_TRACK})
    runs_on = "cpu"
    result_model = Transcript

    def __init__(self, settings: WhisperSettings | None = None) -> None:
        self.settings = settings or WhisperSettings()
        self._model: LazyModel[WhisperModel] = LazyModel(self._load)

    def check(self) -> None:
        resolve_model_dir(self.settings.model)

    def resolved_settings(self) -> WhisperSettings:
        """The settings with the device and compute type that "auto" and the defaults stand for here."""
        device = _resolve_device(self.settings.device)
        compute_type = self.settings.compute_type or ("int8" if device == "cpu" else "float16")
        return self.settings.model_copy(update={"device": device, "compute_type": compute_type})

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `faster_whisper.WhisperModel` besides the model directory (for benchmarks that
        load the model as a plain faster-whisper user would)."""
        resolved = self.resolved_settings()
        return {
            "device": resolved.device,
            "compute_type": resolved.compute_type,
            "cpu_threads": resolved.cpu_threads,
            "local_files_only": True,
        }

    def transcribe_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments `transcribe` gets besides the audio, so a comparison can pass the same."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "language": s.language,
            "task": s.task,
            "beam_size": s.beam_size,
            "vad_filter": s.vad_filter,
            "word_timestamps": s.word_timestamps,
        }
        if s.batched:
            kwargs["batch_size"] = s.batch_size
            # The batched pipeline decodes without timestamps by default: each stretch of speech would come back as
            # one segment, however many sentences (and speakers) it holds.
            kwargs["without_timestamps"] = False
        return kwargs

    def model(self) -> WhisperModel:
        """The loaded model: loaded on first use, once per process, under a lock."""
        return self._model.get()

    def transcriber(self) -> WhisperModel | BatchedInferencePipeline:
        """What `transcribe` is called on. A batched pipeline keeps state between calls, so each call gets its own
        (a thin wrapper; the model is shared)."""
        from faster_whisper import BatchedInferencePipeline

        model = self.model()
        return BatchedInferencePipeline(model) if self.settings.batched else model

    def analyze_blocking(self, item: AnalysisInput) -> AnalysisOutput:
        if item.audio_track_path is None:
            return AnalysisOutput(result=self._empty(NO_AUDIO_NOTE))
        item.report_progress(0.0, "reading the audio track")
        audio = read_audio(item.audio_track_path)
        if audio.size == 0:
            return AnalysisOutput(result=self._empty(EMPTY_AUDIO_NOTE))
        if not self._model.loaded:
            item.report_progress(0.01, "loading the Whisper model")
        transcriber = self.transcriber()
        item.report_progress(0.02, "finding speech" if self.settings.vad_filter else "transcribing")
        found, info = transcriber.transcribe(audio, **self.transcribe_kwargs())
        segments: list[TranscriptSegment] = []
        reached_s = 0.0
        for raw in found:
            if raw.text.strip():  # Whisper sometimes closes a window with an empty segment: nothing to keep
                segments.append(_segment(len(segments), raw, info.duration))
            reached_s = min(max(reached_s, raw.end), info.duration)
            item.report_progress(
                0.05 + 0.94 * reached_s / info.duration, f"transcribed {reached_s:.0f} of {info.duration:.0f} s"
            )
        transcript = Transcript(
            model=self.settings.model_label(),
            language=info.language,
            language_probability=round(float(info.language_probability), 4),
            language_candidates=_candidates(info.all_language_probs),
            duration_s=round(float(info.duration), 3),
            speech_duration_s=round(float(info.duration_after_vad), 3),
            text=" ".join(s.text for s in segments),
            segments=segments,
            settings=self.resolved_settings(),
        )
        item.report_progress(1.0, f"{len(segments)} segments")
        return AnalysisOutput(result=transcript, texts=_searchable(transcript))

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """Each segment, under the key of its searchable text, so a search hit and a dossier citation name the
        same item. A stored transcript whose segments have another shape offers none (it is cited whole)."""
        segments = stored_items(_SEGMENTS, payload, "segments", media_id=media_id, what="transcript")
        if segments is None:
            return []
        return [
            EvidenceItem(
                media_id=media_id,
                analyzer=self.name,
                key=segment_key(s),
                kind="speech",
                summary=s.text,
                start_s=s.start_s,
                end_s=s.end_s,
                confidence=segment_confidence(s),
            )
            for s in segments
        ]

    def _empty(self, note: str) -> Transcript:
        return Transcript(
            model=self.settings.model_label(),
            language=None,
            language_probability=None,
            duration_s=0.0,
            speech_duration_s=0.0,
            text="",
            settings=self.resolved_settings(),
            note=note,
        )

    def _load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        path = resolve_model_dir(self.settings.model)
        kwargs = self.model_kwargs()
        logger.info(
            "loading Whisper model %s on %s (%s)", self.settings.model_label(), kwargs["device"], kwargs["compute_type"]
        )
        return WhisperModel(str(path), **kwargs)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _segment(index: int, raw: Any, duration_s: float) -> TranscriptSegment:
    """A faster-whisper `Segment` as stored: renumbered from 0 (the two pipelines number differently), times held
    within the audio (Whisper's last timestamp may point past the end)."""

    def at(seconds: float) -> float:
        return round(min(max(float(seconds), 0.0), duration_s), 3)

    return TranscriptSegment(
        id=index,
        start_s=at(raw.start),
        end_s=at(raw.end),
        text=raw.text.strip(),
        avg_logprob=round(float(raw.avg_logprob), 4),
        no_speech_prob=round(float(raw.no_speech_prob), 4),
        compression_ratio=round(float(raw.compression_ratio), 3),
        words=[
            TranscriptWord(
                start_s=at(w.start),
                end_s=at(w.end),
                word=w.word,
                probability=round(float(w.probability), 4),
            )
            for w in raw.words or ()
        ],
    )


def _candidates(probabilities: list[tuple[str, float]] | None) -> list[LanguageGuess]:
    ranked = sorted(probabilities or (), key=lambda pair: pair[1], reverse=True)[:LANGUAGE_CANDIDATES]
    return [LanguageGuess(language=code, probability=round(float(p), 4)) for code, p in ranked]


def segment_key(segment: TranscriptSegment) -> str:
    """The key of a segment's searchable text and evidence item."""
    return f"segment-{segment.id}"


def segment_confidence(segment: TranscriptSegment) -> float:
    """How sure the model is that the words were said, 0-1: the chance the window holds speech (1 - no_speech_prob)
    times the geometric mean of the tokens' probabilities (exp(avg_logprob); Whisper's own fallback treats
    avg_logprob < -1, about 0.37, as a failed decoding). The batched pipeline keeps segments that the sequential one
    would drop as silence (no_speech_prob > 0.6 with a low avg_logprob); this figure ranks those low."""
    speech = 1.0 - min(max(segment.no_speech_prob, 0.0), 1.0)
    return round(speech * min(math.exp(segment.avg_logprob), 1.0), 4)


def _searchable(transcript: Transcript) -> list[SearchableText]:
    """One searchable text per segment, keyed by the segment's id."""
    return [
        SearchableText(
            key=segment_key(s),
            text=s.text,
            start_s=s.start_s,
            end_s=s.end_s,
            fields={"language": transcript.language, "avg_logprob": s.avg_logprob},
        )
        for s in transcript.segments
    ]
