"""The mel spectrogram Resemblyzer's encoder was trained on, in numpy (librosa's defaults, without librosa).

`librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)`: a centred, zero-padded STFT
with a periodic Hann window, its power (not log), through a Slaney-style mel filterbank with Slaney area
normalisation. The encoder's input scale depends on every one of these choices, so they are reproduced exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 40

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz, 200/3 Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    mel[log_region] = _MIN_LOG_MEL + np.log(hz[log_region] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    hz = mel * _F_SP
    log_region = mel >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[log_region] - _MIN_LOG_MEL))
    return hz


@functools.cache
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> npt.NDArray[np.float32]:
    """Triangular filters (n_mels, 1 + n_fft // 2) from 0 Hz to Nyquist, each of unit area (librosa.filters.mel)."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges_mel = np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2)
    edges = mel_to_hz(edges_mel)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.cache
def _hann(n_fft: int) -> npt.NDArray[np.float64]:
    """Periodic Hann window (scipy.signal.get_window('hann', n, fftbins=True))."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window.setflags(write=False)
    return window


def mel_spectrogram(wav: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Frames (1 + len(wav) // 160, 40) of mel power, as Resemblyzer's `wav_to_mel_spectrogram` makes them."""
    return mel_spectrograms([wav])[0]


def mel_spectrograms(wavs: Sequence[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
    """`mel_spectrogram` of each waveform; their frames share one FFT call and one product with the filterbank
    (many small BLAS products are slow when the worker's other threads hold the cores)."""
    framed = [
        np.lib.stride_tricks.sliding_window_view(np.pad(w.astype(np.float64), N_FFT // 2), N_FFT)[::HOP_LENGTH]
        for w in wavs
    ]
    power = np.abs(np.fft.rfft(np.concatenate(framed) * _hann(N_FFT), axis=1)) ** 2
    mel = power.astype(np.float32) @ mel_filterbank().T
    bounds = np.cumsum([len(f) for f in framed])[:-1]
    return [np.ascontiguousarray(part) for part in np.split(mel, bounds)]
