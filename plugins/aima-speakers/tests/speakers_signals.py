"""Deterministic voice-like test signals (no randomness, no files), shared by the tests and the script that made the
reference embeddings in reference/."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE = 16000


def synthetic_voice(f0: float, formants: tuple[float, ...], seconds: float = 2.5) -> npt.NDArray[np.float32]:
    """A buzz at pitch `f0` (with 3 Hz vibrato) shaped by formant peaks and cut into 4 syllables a second."""
    t = np.arange(round(seconds * RATE)) / RATE
    pitch = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    signal = np.zeros_like(t)
    for k in range(1, 40):
        freq = k * pitch
        gain = sum(np.exp(-(((freq - f) / 120.0) ** 2)) for f in formants) + 0.05
        signal += gain * np.sin(k * phase) * (freq < RATE / 2) / k
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))
    signal *= envelope
    voice: npt.NDArray[np.float32] = (0.3 * signal / np.abs(signal).max()).astype(np.float32)
    return voice


#: Pitch and formants of two voices that sound nothing alike.
VOICES: dict[str, tuple[float, tuple[float, ...]]] = {
    "low": (110.0, (700.0, 1100.0, 2400.0)),
    "high": (230.0, (400.0, 2200.0, 3000.0)),
}
