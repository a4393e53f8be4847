"""AIMA plugin: speech transcription with Whisper (faster-whisper on CTranslate2)."""

from aima_whisper.analyzer import WhisperAnalyzer
from aima_whisper.results import Transcript
from aima_whisper.settings import WhisperSettings

__all__ = ["Transcript", "WhisperAnalyzer", "WhisperSettings"]
