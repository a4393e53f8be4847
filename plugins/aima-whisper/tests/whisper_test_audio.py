"""Audio for the whisper tests: WAV files as the worker prepares them, speech from espeak-ng, word error rate."""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aima.analysis import AnalysisInput, MediaKind
from aima.testing.inputs import mono_samples

RATE = 16_000


def write_wav(path: Path, samples: npt.NDArray[np.float32], *, rate: int = RATE, channels: int = 1) -> Path:
    """16-bit PCM WAV of float samples in [-1, 1] (interleaved when `channels` > 1)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return path


def voiced(seconds: float, *, seed: int = 0) -> npt.NDArray[np.float32]:
    """Syllables of synthetic vowels (a glottal pulse train through three formant resonators, 4 per second): not
    words, but sound that voice activity detection takes for speech, so a test needs no speech synthesiser."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * np.arange(n) / RATE)
    pulses = np.diff(np.floor(np.cumsum(pitch / RATE)), prepend=0.0)
    vowels = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))
    syllable = RATE // 4
    out: npt.NDArray[np.float64] = np.zeros(n)
    for start in range(0, n, syllable):
        chunk = pulses[start : start + syllable]
        formants = vowels[rng.integers(len(vowels))]
        sound = sum(gain * _resonate(chunk, f) for gain, f in zip((1.0, 0.5, 0.3), formants, strict=True))
        out[start : start + syllable] = sound * np.sin(np.pi * np.arange(len(chunk)) / len(chunk)) ** 0.5
    out += 0.01 * rng.standard_normal(n)
    samples: npt.NDArray[np.float32] = (0.5 * out / np.abs(out).max()).astype(np.float32)
    return samples


def _resonate(x: npt.NDArray[np.float64], frequency: float, bandwidth: float = 100.0) -> npt.NDArray[np.float64]:
    """A two-pole resonator (one formant)."""
    r = np.exp(-np.pi * bandwidth / RATE)
    c = 2 * r * np.cos(2 * np.pi * frequency / RATE)
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for i, value in enumerate(x):
        y[i] = (1 - r) * value + c * y1 - r * r * y2
        y1, y2 = y[i], y1
    return y


def espeak() -> str | None:
    return shutil.which("espeak-ng")


def speak(text: str, out: Path) -> Path:
    """`text` spoken by espeak-ng (22.05 kHz), resampled with PyAV to the worker's 16 kHz mono track."""
    raw = out.with_suffix(".espeak.wav")
    subprocess.run([espeak() or "espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    return write_wav(out, mono_samples(raw, RATE).astype(np.float32) / 32768.0)


def audio_item(
    wav: Path | None, *, kind: MediaKind = MediaKind.AUDIO, progress: list[tuple[float, str]] | None = None
) -> AnalysisInput:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress.append((fraction, message))

    return AnalysisInput(
        media_id="media-1",
        case_id="case-1",
        kind=kind,
        content_type="audio/wav" if kind == MediaKind.AUDIO else "video/mp4",
        size_bytes=wav.stat().st_size if wav else 1,
        sha256="0" * 64,
        original_path=wav or Path("/nonexistent"),
        report_progress=report,
        audio_track_path=wav,
    )


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("Don't," -> "don't")."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words: word-level Levenshtein distance."""
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / max(len(ref), 1)
