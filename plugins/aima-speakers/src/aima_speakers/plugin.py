"""The ``speakers`` analyzer: who speaks when in audio and video, with a voice embedding per turn."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    Embedding,
    EvidenceItem,
    LazyModel,
    MediaKind,
    ModelNotInstalled,
    Need,
    PluginConfig,
    RegisterAnalyzer,
    stored_items,
)
from aima.errors import AimaError
from aima.hookspecs import hookimpl
from aima_speakers.audio import read_wav, speech_regions
from aima_speakers.diarization import Turn, Vectors, cluster, cut_windows, mean_direction, merge_turns
from aima_speakers.encoder import VoiceEncoder, bundled_weights_path, volume_gain
from aima_speakers.mel import SAMPLE_RATE
from aima_speakers.results import Speaker, SpeakerSettings, SpeakersResult, SpeakerTurn

logger = logging.getLogger(__name__)

PLUGIN_NAME = "speakers"
COLLECTION = "voice_embeddings"
INSTALL_COMMAND = "pip install --no-deps Resemblyzer==0.1.4"
#: VAD: pauses shorter than this stay inside a region; regions get this much context on each side.
MIN_SILENCE_S = 0.3
SPEECH_PAD_S = 0.1
#: What `evidence` reads of a stored result: only the turns, so a result stored with older settings still offers them.
_TURNS = TypeAdapter(list[SpeakerTurn])


class InvalidSpeakerSettings(AimaError):
    code = "INVALID_PLUGIN_SETTINGS"


def _model_name() -> str:
    try:
        return f"resemblyzer-{version('Resemblyzer')} GE2E voice encoder (onnxruntime)"
    except PackageNotFoundError:
        return "resemblyzer GE2E voice encoder (onnxruntime)"


class SpeakersAnalyzer(BlockingAnalyzer):
    name = "speakers"
    version = "1.0.0"
    description = (
        "Speaker diarization: speech found by silero VAD, a 256-d Resemblyzer voice embedding per 1.6 s window, "
        "windows clustered into speakers (S1, S2, …) and merged into timed turns, one voice embedding per turn."
    )
    media_kinds = frozenset({MediaKind.AUDIO, MediaKind.VIDEO})
    needs = frozenset({Need.AUDIO_TRACK})
    runs_on = "cpu"
    result_model = SpeakersResult

    def __init__(self, settings: SpeakerSettings | None = None) -> None:
        self.settings = settings or SpeakerSettings()
        self._encoder = LazyModel(lambda: VoiceEncoder.load(self._weights_path(), self.settings.threads))

    def _weights_path(self) -> Path:
        if self.settings.weights_path:
            return Path(self.settings.weights_path)
        return bundled_weights_path() or Path("resemblyzer/pretrained.pt")

    def check(self) -> None:
        if importlib.util.find_spec("faster_whisper") is None:
            raise ModelNotInstalled(
                "the silero VAD of faster-whisper is missing; install it with: pip install faster-whisper"
            )
        path = self._weights_path()
        if not path.is_file():
            raise ModelNotInstalled(
                f"the Resemblyzer voice encoder weights ({path}) are missing; install them with: {INSTALL_COMMAND}"
            )

    def analyze_blocking(self, item: AnalysisInput) -> AnalysisOutput:
        settings = self.settings
        if item.audio_track_path is None:
            return self._result([], [], duration_s=0.0, speech_s=0.0)
        item.report_progress(0.0, "reading the audio track")
        samples = read_wav(item.audio_track_path)
        duration_s = len(samples) / SAMPLE_RATE
        item.report_progress(0.05, "finding speech")
        regions = speech_regions(
            samples,
            threshold=settings.vad_threshold,
            min_speech_s=settings.min_segment_s,
            min_silence_s=MIN_SILENCE_S,
            pad_s=SPEECH_PAD_S,
        )
        windows = cut_windows(regions, settings.window_s, settings.min_segment_s)
        speech_s = sum(r.duration_s for r in regions if r.duration_s >= settings.min_segment_s)
        if not windows:
            item.report_progress(1.0, "no speech")
            return self._result([], [], duration_s=duration_s, speech_s=speech_s)
        item.report_progress(0.15, f"embedding {len(windows)} windows of speech")
        encoder = self._encoder.get()
        # Resemblyzer levels the whole file; here the level of the speech alone, so long silences do not inflate it.
        samples *= np.float32(volume_gain(np.concatenate([samples[r.start : r.end] for r in regions])))
        vectors = encoder.embed_utterances(
            [samples[w.start : w.end] for w in windows],  # views: overlapping windows are not copied
            progress=lambda done: item.report_progress(0.15 + 0.7 * done / len(windows), f"embedded {done} windows"),
        )
        item.report_progress(0.85, "clustering voices")
        labels = cluster(vectors, settings.threshold, settings.max_speakers)
        speakers, result_turns, embeddings = _describe(
            merge_turns(windows, labels, settings.max_gap_s), vectors, labels
        )
        item.report_progress(1.0, f"{len(speakers)} speakers in {len(result_turns)} turns")
        logger.info(
            "media %s: %d speakers in %d turns, %.1f s of speech",
            item.media_id,
            len(speakers),
            len(result_turns),
            speech_s,
        )
        return self._result(speakers, result_turns, duration_s=duration_s, speech_s=speech_s, embeddings=embeddings)

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        """Each turn, under the key of its voice embedding: the key a voice cluster's members and a dossier's
        citations use. A stored result whose turns have another shape offers none (it is cited whole)."""
        turns = stored_items(_TURNS, payload, "turns", media_id=media_id, what="speakers result")
        if turns is None:
            return []
        return [
            EvidenceItem(
                media_id=media_id,
                analyzer=self.name,
                key=turn.key,
                kind="speaker",
                summary=f"{turn.speaker} speaks",
                start_s=turn.start_s,
                end_s=turn.end_s,
                # A cosine similarity; clipped to 0-1 like other confidences (a turn's voice is never opposed to
                # its own speaker's).
                confidence=min(max(turn.confidence, 0.0), 1.0),
            )
            for turn in turns
        ]

    def _result(
        self,
        speakers: list[Speaker],
        turns: list[SpeakerTurn],
        *,
        duration_s: float,
        speech_s: float,
        embeddings: list[Embedding] | None = None,
    ) -> AnalysisOutput:
        result = SpeakersResult(
            speakers=speakers,
            turns=turns,
            duration_s=round(duration_s, 3),
            speech_s=round(speech_s, 3),
            model=_model_name(),
            settings=self.settings,
        )
        return AnalysisOutput(result, embeddings=embeddings or [])


def _describe(
    turns: list[Turn], vectors: Vectors, labels: npt.NDArray[np.int64]
) -> tuple[list[Speaker], list[SpeakerTurn], list[Embedding]]:
    """Speakers and turns as the result shows them, and each turn's mean voice as its embedding."""
    centroids = [mean_direction(vectors[labels == s]) for s in range(int(labels.max()) + 1)]
    speakers: list[Speaker] = []
    for index in range(len(centroids)):
        own = [t for t in turns if t.speaker == index]
        speakers.append(
            Speaker(
                label=f"S{index + 1}",
                total_speech_s=round(sum(t.end_s - t.start_s for t in own), 3),
                turn_count=len(own),
                first_s=round(own[0].start_s, 3),
                last_s=round(own[-1].end_s, 3),
            )
        )
    result_turns: list[SpeakerTurn] = []
    embeddings: list[Embedding] = []
    for number, turn in enumerate(turns, start=1):
        vector = mean_direction(vectors[list(turn.windows)])
        label, key = f"S{turn.speaker + 1}", f"turn-{number}"
        start_s, end_s = round(turn.start_s, 3), round(turn.end_s, 3)
        confidence = round(float(vector @ centroids[turn.speaker]), 4)
        result_turns.append(
            SpeakerTurn(
                key=key,
                start_s=start_s,
                end_s=end_s,
                speaker=label,
                confidence=confidence,
                window_count=len(turn.windows),
            )
        )
        fields = {"start_s": start_s, "end_s": end_s, "speaker": label}
        embeddings.append(Embedding(COLLECTION, key, [float(v) for v in vector], fields))
    return speakers, result_turns, embeddings


def load_settings(config: PluginConfig) -> SpeakerSettings:
    try:
        return SpeakerSettings.model_validate(dict(config.get(PLUGIN_NAME, {})))
    except ValidationError as exc:
        raise InvalidSpeakerSettings(f"Invalid [plugins.{PLUGIN_NAME}] settings: {exc}") from exc


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(SpeakersAnalyzer(load_settings(config)))
