"""The ``fusion`` plugin: registers the fusion case analyzer with the settings of ``[plugins.fusion]``."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima_fusion.analyzer import FusionAnalyzer
from aima_fusion.settings import FusionSettings

PLUGIN_NAME = "fusion"


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(FusionAnalyzer(FusionSettings.model_validate(config.get(PLUGIN_NAME, {}))))
