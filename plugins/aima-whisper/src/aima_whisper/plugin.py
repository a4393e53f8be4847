"""The ``whisper`` plugin: registers the whisper analyzer with the settings of ``[plugins.whisper]``."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima_whisper.analyzer import WhisperAnalyzer
from aima_whisper.settings import WhisperSettings

PLUGIN_NAME = "whisper"


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(WhisperAnalyzer(WhisperSettings.model_validate(config.get(PLUGIN_NAME, {}))))
