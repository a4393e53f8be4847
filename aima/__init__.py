"""AIMA: AI media analysis. Plugins import what they need from here."""

from aima.analysis import (
    AnalysisInput,
    Analyzer,
    BlockingAnalyzer,
    MediaKind,
    Need,
    ProgressCallback,
)
from aima.errors import AimaError, AnalyzerNotApplicable, CorruptMedia, UnsupportedMedia
from aima.hookspecs import hookimpl

__all__ = [
    "AimaError",
    "AnalysisInput",
    "Analyzer",
    "AnalyzerNotApplicable",
    "BlockingAnalyzer",
    "CorruptMedia",
    "MediaKind",
    "Need",
    "ProgressCallback",
    "UnsupportedMedia",
    "hookimpl",
]
