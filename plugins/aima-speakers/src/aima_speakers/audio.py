"""The audio track as samples, and where in it someone speaks (silero VAD, as shipped with faster-whisper)."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from aima.errors import CorruptMedia
from aima_speakers.mel import SAMPLE_RATE

Samples = npt.NDArray[np.float32]

_PCM_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def read_wav(path: Path) -> Samples:
    """The track as float32 samples in [-1, 1] at 16 kHz mono; the worker prepares it so, other PCM is converted."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise CorruptMedia(f"The audio track cannot be read as a PCM WAV file: {exc}") from exc
    if width not in _PCM_DTYPES or channels < 1 or rate <= 0:
        raise CorruptMedia(f"The audio track has an unsupported layout ({width * 8}-bit, {channels} channels).")
    ints = np.frombuffer(raw[: len(raw) - len(raw) % (width * channels)], dtype=_PCM_DTYPES[width])
    if width == 1:
        samples: Samples = (ints.astype(np.float32) - 128.0) / 128.0
    else:
        samples = ints.astype(np.float32) / float(2 ** (8 * width - 1))
    samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, rate).limit_denominator(1000)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)
    return samples


@dataclass(frozen=True)
class SpeechRegion:
    """Samples [start, end) of the track in which the VAD hears speech."""

    start: int
    end: int

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def speech_regions(
    samples: Samples, *, threshold: float, min_speech_s: float, min_silence_s: float, pad_s: float
) -> list[SpeechRegion]:
    """Stretches of speech found by silero VAD; pauses shorter than `min_silence_s` do not split a region."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps  # imports ctranslate2: only when needed

    if samples.size == 0:
        return []
    options = VadOptions(
        threshold=threshold,
        min_speech_duration_ms=int(min_speech_s * 1000),
        min_silence_duration_ms=int(min_silence_s * 1000),
        speech_pad_ms=int(pad_s * 1000),
    )
    stamps = get_speech_timestamps(samples, options, sampling_rate=SAMPLE_RATE)
    return [SpeechRegion(int(s["start"]), int(s["end"])) for s in stamps if s["end"] > s["start"]]
