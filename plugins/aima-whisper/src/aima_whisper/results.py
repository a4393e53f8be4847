"""The transcript the whisper analyzer stores: segments with confidences and per-word timings, in media time."""

from __future__ import annotations

from pydantic import BaseModel, Field

from aima_whisper.settings import WhisperSettings


class TranscriptWord(BaseModel):
    start_s: float
    end_s: float
    #: As Whisper spells it, with its leading space and punctuation.
    word: str
    probability: float


class TranscriptSegment(BaseModel):
    """A stretch of speech, in seconds from the start of the media; `id` numbers segments from 0 in the order Whisper
    produced them (time order) and names the searchable text ``segment-{id}``."""

    id: int
    start_s: float
    end_s: float
    text: str
    #: Mean log-probability of the segment's tokens: near 0 is confident, below -1 is doubtful.
    avg_logprob: float
    #: Probability that the window holds no speech; high together with a low `avg_logprob` hints at a hallucination.
    no_speech_prob: float
    #: gzip ratio of the text; above 2.4 the text is repetitive, a typical decoding failure.
    compression_ratio: float
    words: list[TranscriptWord] = Field(default_factory=list)


class LanguageGuess(BaseModel):
    language: str
    probability: float


class Transcript(BaseModel):
    """What was said, when, and how sure the model is."""

    model: str
    #: The spoken language (detected, or as configured); None when there was nothing to transcribe.
    language: str | None
    language_probability: float | None
    #: The most likely languages when the language was detected, best first.
    language_candidates: list[LanguageGuess] = Field(default_factory=list)
    duration_s: float
    #: Seconds of audio that voice activity detection kept (the whole duration without VAD).
    speech_duration_s: float
    #: All segments' text, in order.
    text: str
    segments: list[TranscriptSegment] = Field(default_factory=list)
    #: The settings this transcript was made with (device and compute type as resolved).
    settings: WhisperSettings
    #: Why the transcript is empty, when it is for a reason other than silence.
    note: str | None = None
