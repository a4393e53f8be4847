"""The plugin is found through its entry point, as an installed third-party plugin would be."""

from __future__ import annotations

import pytest

from aima.analysis import MediaKind, Need
from aima.errors import InvalidInput
from aima.plugins import LOAD_PLUGINS_ENV, AnalyzerRegistry, create_plugin_manager
from aima.vision import VisualDescription
from aima_llava.analyzer import LlavaAnalyzer


def test_the_entry_point_registers_the_vision_analyzer_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "llava")
    registry = AnalyzerRegistry(create_plugin_manager(), {"llava": {"endpoint": "vllm", "low_confidence": "0.3"}})
    analyzer = registry.get("llava")
    assert isinstance(analyzer, LlavaAnalyzer)
    assert analyzer.runs_on == "vllm" and analyzer.settings.low_confidence == 0.3
    assert analyzer.needs == {Need.KEYFRAMES} and analyzer.result_model is VisualDescription
    assert analyzer.accepts(MediaKind.VIDEO) and analyzer.accepts(MediaKind.IMAGE)
    assert not analyzer.accepts(MediaKind.AUDIO)
    analyzer.check()  # the model lives on a server: nothing to look for on this machine
    [plugin] = [p for p in registry.plugins() if p.name == "llava"]
    assert plugin.analyzers == ("llava",) and plugin.version == "0.1.0"
    assert AnalyzerRegistry(create_plugin_manager(), {}).get("llava").runs_on == "llava"


@pytest.mark.parametrize(
    "settings",
    [{"low_confidence": 2}, {"endpoint": "Not A Name"}, {"max_new_tokens": 8}, {"temprature": 0.5}],
)
def test_bad_settings_stop_the_worker_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object]
) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "llava")
    with pytest.raises(InvalidInput, match="Invalid settings for plugin 'llava'"):
        AnalyzerRegistry(create_plugin_manager(), {"llava": settings})


def test_an_empty_follow_up_turns_follow_ups_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "llava")
    analyzer = AnalyzerRegistry(create_plugin_manager(), {"llava": {"follow_up": ""}}).get("llava")
    assert isinstance(analyzer, LlavaAnalyzer) and analyzer.settings.follow_up is None
