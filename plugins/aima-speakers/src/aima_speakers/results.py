"""The speakers analyzer's settings and result, as stored and served."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SpeakerSettings(BaseModel):
    """``[plugins.speakers]`` in aima.toml (or ``AIMA_PLUGINS__SPEAKERS__<KEY>``); the defaults work as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        0.7,
        gt=0.0,
        lt=1.0,
        description="Mean cosine similarity of two groups of windows at or above which they are one speaker.",
    )
    min_segment_s: float = Field(
        0.5, ge=0.1, le=10.0, description="Speech regions shorter than this are too short to tell voices apart."
    )
    window_s: float = Field(1.6, ge=0.5, le=10.0, description="Length of the windows embedded on their own.")
    max_speakers: int = Field(20, ge=1, le=100, description="At most this many speakers per media item.")
    max_gap_s: float = Field(1.0, ge=0.0, le=30.0, description="Longer pauses end a turn even if the speaker stays.")
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Silero VAD speech probability threshold.")
    threads: int = Field(1, ge=1, le=64, description="CPU threads of the voice encoder (onnxruntime) per worker.")
    weights_path: str | None = Field(
        None, description="A Resemblyzer-format encoder checkpoint; by default the one the Resemblyzer package ships."
    )


class Speaker(BaseModel):
    label: str = Field(description='"S1", "S2", … in order of first speech; local to this media item.')
    total_speech_s: float
    turn_count: int
    first_s: float
    last_s: float


class SpeakerTurn(BaseModel):
    key: str = Field(description='"turn-1", …: the key of the turn\'s voice embedding.')
    start_s: float
    end_s: float
    speaker: str
    confidence: float = Field(
        description="Cosine similarity of the turn's voice to its speaker's mean voice (1: identical)."
    )
    window_count: int


class SpeakersResult(BaseModel):
    speakers: list[Speaker]
    turns: list[SpeakerTurn]
    duration_s: float
    speech_s: float = Field(description="Speech the VAD found, in seconds (turns cover it).")
    model: str
    settings: SpeakerSettings
