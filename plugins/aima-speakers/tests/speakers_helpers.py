"""Speech for the speakers tests: espeak-ng voices as 16 kHz mono samples and WAV files, and analyzer inputs."""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from aima.analysis import AnalysisInput, AnalysisOutput, MediaKind
from aima_speakers.plugin import SpeakersAnalyzer

Samples = npt.NDArray[np.float32]
RATE = 16000
#: espeak-ng voice, pitch (0-99) and words per minute: a low male and a high female voice.
Voice = tuple[str, int, int]
VOICE_A: Voice = ("en-us+m3", 40, 150)
VOICE_B: Voice = ("en+f4", 75, 175)


def speak(espeak: str, text: str, voice: Voice) -> Samples:
    name, pitch, speed = voice
    command = [espeak, "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(data)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    resampled: Samples = resample_poly(samples, RATE, rate).astype(np.float32)
    return resampled


def write_wav(path: Path, samples: Samples) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes())
    return path


def silence(seconds: float) -> Samples:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def media_input(path: Path | None, kind: MediaKind = MediaKind.AUDIO) -> AnalysisInput:
    return AnalysisInput(
        media_id="media-1",
        case_id="case-1",
        kind=kind,
        content_type="audio/wav",
        size_bytes=path.stat().st_size if path else 0,
        sha256="0" * 64,
        original_path=path or Path("/nonexistent"),
        audio_track_path=path,
    )


def analyze(analyzer: SpeakersAnalyzer, path: Path | None) -> AnalysisOutput:
    output = analyzer.analyze_blocking(media_input(path))
    assert isinstance(output, AnalysisOutput)
    return output
