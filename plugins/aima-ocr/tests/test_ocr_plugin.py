"""The plugin is found through its entry point, as an installed third-party plugin would be."""

from __future__ import annotations

import pytest

from aima.analysis import MediaKind, Need
from aima.plugins import LOAD_PLUGINS_ENV, AnalyzerRegistry, create_plugin_manager
from aima_ocr.analyzer import OcrAnalyzer


def test_the_entry_point_registers_the_ocr_analyzer_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "ocr")
    registry = AnalyzerRegistry(create_plugin_manager(), {"ocr": {"min_confidence": 0.7}})
    analyzer = registry.get("ocr")
    assert isinstance(analyzer, OcrAnalyzer)
    assert analyzer.settings.min_confidence == 0.7
    assert analyzer.needs == {Need.KEYFRAMES}
    assert analyzer.accepts(MediaKind.VIDEO) and analyzer.accepts(MediaKind.IMAGE)
    assert not analyzer.accepts(MediaKind.AUDIO)
    [plugin] = [p for p in registry.plugins() if p.name == "ocr"]
    assert plugin.analyzers == ("ocr",) and plugin.version == "0.1.0"
