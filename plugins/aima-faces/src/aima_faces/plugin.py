"""The plugin's entry point (``[project.entry-points.aima] faces``): registers the ``faces`` analyzer."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima_faces.analyzer import FacesAnalyzer
from aima_faces.settings import load_settings


@hookimpl
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    register(FacesAnalyzer(load_settings(config)))
