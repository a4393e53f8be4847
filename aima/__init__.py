"""AIMA: AI media analysis. Plugins import what they need from here."""

from aima.analysis import (
    AnalysisInput,
    Analyzer,
    BlockingAnalyzer,
    Keyframe,
    MediaKind,
    Need,
    ProgressCallback,
)
from aima.errors import AimaError, AnalyzerNotApplicable, CorruptMedia, ModelUnavailable, UnsupportedMedia
from aima.hookspecs import hookimpl

__all__ = [
    "AimaError",
    "AnalysisInput",
    "Analyzer",
    "AnalyzerNotApplicable",
    "BlockingAnalyzer",
    "CorruptMedia",
    "Keyframe",
    "MediaKind",
    "ModelUnavailable",
    "Need",
    "ProgressCallback",
    "UnsupportedMedia",
    "hookimpl",
]
