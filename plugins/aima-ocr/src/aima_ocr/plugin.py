"""Entry point ``ocr`` (group ``aima``): registers the OCR analyzer with the plugin's settings."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima_ocr.analyzer import OcrAnalyzer
from aima_ocr.settings import ocr_settings


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(OcrAnalyzer(ocr_settings(config)))
