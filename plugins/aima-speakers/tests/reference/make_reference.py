"""Writes resemblyzer_reference.npz: what the original Resemblyzer 0.1.4 (torch, librosa) computes for the signals of
speakers_signals.py. Needs those packages, so it is run by hand, not by the tests:

    pip install torch librosa && pip install --no-deps Resemblyzer==0.1.4
    python plugins/aima-speakers/tests/reference/make_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scipy.ndimage

sys.modules.setdefault("scipy.ndimage.morphology", scipy.ndimage)  # Resemblyzer imports this removed alias

from resemblyzer import VoiceEncoder, audio  # noqa: E402
from speakers_signals import VOICES, synthetic_voice  # noqa: E402


def main() -> None:
    encoder = VoiceEncoder("cpu", verbose=False)
    out: dict[str, Any] = {}
    for name, (f0, formants) in VOICES.items():
        wav = synthetic_voice(f0, formants)
        out[f"{name}_mel"] = audio.wav_to_mel_spectrogram(wav)
        out[f"{name}_embedding"] = encoder.embed_utterance(audio.normalize_volume(wav, -30, increase_only=True))
    np.savez_compressed(Path(__file__).with_name("resemblyzer_reference.npz"), **out)


if __name__ == "__main__":
    main()
