"""Entry point ``minilm`` (group ``aima``): registers the MiniLM-L6 text embedder with the plugin's settings."""

from __future__ import annotations

from aima.analysis import PluginConfig, RegisterEmbedder
from aima.hookspecs import hookimpl
from aima_minilm.embedder import MiniLMEmbedder
from aima_minilm.settings import minilm_settings


@hookimpl
def register_embedders(register: RegisterEmbedder, config: PluginConfig) -> None:
    register(MiniLMEmbedder(minilm_settings(config)))
