"""Fixtures of the speakers tests; helpers live in speakers_helpers.py (a unique name beside other plugins' tests)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
from speakers_helpers import Samples, Voice, speak

from aima_speakers.plugin import SpeakersAnalyzer


@pytest.fixture(scope="session")
def say() -> Callable[[str, Voice], Samples]:
    """``say(text, voice)``: espeak-ng's speech at 16 kHz; tests that use it skip where espeak-ng is missing."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    return lambda text, voice: speak(espeak, text, voice)


@pytest.fixture(scope="session")
def analyzer() -> SpeakersAnalyzer:
    """One analyzer for the session, so the encoder loads once, as in a worker."""
    return SpeakersAnalyzer()
