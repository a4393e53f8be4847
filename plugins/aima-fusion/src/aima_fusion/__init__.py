"""AIMA plugin: a case's analyses fused by a language model into a dossier whose every statement cites evidence."""

from aima_fusion.analyzer import FusionAnalyzer
from aima_fusion.schema import ModelDossier
from aima_fusion.settings import FusionSettings

__all__ = ["FusionAnalyzer", "FusionSettings", "ModelDossier"]
