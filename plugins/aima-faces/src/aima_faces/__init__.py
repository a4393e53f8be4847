"""AIMA face plugin: face detection, crops and ArcFace identity embeddings with insightface model packs."""

from aima_faces.analyzer import FacesAnalyzer
from aima_faces.results import DetectedFace, FacesResult, FrameFaces, ModelInfo
from aima_faces.settings import FaceSettings

__all__ = ["DetectedFace", "FaceSettings", "FacesAnalyzer", "FacesResult", "FrameFaces", "ModelInfo"]
