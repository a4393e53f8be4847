"""Reading the audio track the worker prepared (16 kHz mono 16-bit PCM WAV) as the samples Whisper takes."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from aima.errors import CorruptMedia

SAMPLE_RATE = 16_000
#: The worker's audio track: (rate, channels, bytes per sample, compression).
PREPARED_FORMAT = (SAMPLE_RATE, 1, 2, "NONE")


def read_audio(path: Path) -> npt.NDArray[np.float32]:
    """Mono float32 samples at 16 kHz, scaled as faster-whisper's own decoder scales them (s16 / 32768).

    The prepared track is read with the standard library, which is quicker than decoding it; a file in another
    format (a track prepared elsewhere) is decoded and resampled with PyAV, as faster-whisper would.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getcomptype()) == PREPARED_FORMAT:
                data = wav.readframes(wav.getnframes())
                usable = len(data) - len(data) % 2
                return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
    except (wave.Error, EOFError, RuntimeError, struct.error):  # what the wave module raises on a malformed file
        pass  # not a plain PCM WAV: FFmpeg may still read it, or says why not
    return _decode(path)


def _decode(path: Path) -> npt.NDArray[np.float32]:
    from faster_whisper.audio import decode_audio

    try:
        samples: npt.NDArray[np.float32] = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except IndexError as exc:  # PyAV's answer to decode(audio=0) when there is no audio stream
        raise CorruptMedia("The audio track holds no audio stream.") from exc
    except (av.error.FFmpegError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)  # FFmpeg's reason without the worker's local path
        raise CorruptMedia(f"The audio track could not be decoded: {reason}.") from exc
    return samples
