"""The hooks a plugin may implement. Registration hooks are synchronous; async work lives in the registered objects."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

from aima.analysis import RegisterAnalyzer

hookspec = HookspecMarker("aima")
hookimpl = HookimplMarker("aima")


@hookspec
def register_analyzers(register: RegisterAnalyzer) -> None:
    """Register `Analyzer` instances by calling ``register(analyzer)`` for each."""
