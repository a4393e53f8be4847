"""The hooks a plugin may implement. Registration hooks are synchronous; async work lives in the registered objects."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

from aima.analysis import PluginConfig, RegisterAnalyzer, RegisterEmbedder

hookspec = HookspecMarker("aima")
hookimpl = HookimplMarker("aima")


@hookspec
def register_analyzers(register: RegisterAnalyzer, config: PluginConfig) -> None:
    """Register `Analyzer` instances by calling ``register(analyzer)`` for each. `config` holds every plugin's
    settings by plugin name (``config.get("whisper", {})``); an implementation may leave the argument out."""


@hookspec
def register_embedders(register: RegisterEmbedder, config: PluginConfig) -> None:
    """Register text `Embedder` instances by calling ``register(embedder)`` for each."""
