"""Entry point ``llava`` (group ``aima``): registers the vision analyzer with the plugin's settings."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima_llava.analyzer import LlavaAnalyzer
from aima_llava.settings import llava_settings


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(LlavaAnalyzer(llava_settings(config)))
