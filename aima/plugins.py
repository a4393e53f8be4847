"""Plugin loading: built-ins and external plugins go through the same pluggy manager.

Built-in plugins are modules named in `DEFAULT_PLUGINS`; external ones are found through the ``aima`` entry point
group, whose entry point names are the plugin names. ``AIMA_LOAD_PLUGINS`` (a comma-separated list of those names,
empty for none) limits which external plugins load, as llm's ``LLM_LOAD_PLUGINS`` does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from aima import hookspecs
from aima.analysis import Analyzer, CaseAnalyzer, Embedder, PluginConfig
from aima.errors import UnknownAnalyzer

logger = logging.getLogger(__name__)

DEFAULT_PLUGINS: tuple[str, ...] = ("aima.analyzers.media_probe",)
ENTRY_POINT_GROUP = "aima"
LOAD_PLUGINS_ENV = "AIMA_LOAD_PLUGINS"


def create_plugin_manager(*, load_external: bool = True) -> pluggy.PluginManager:
    """A manager with the built-ins registered and, unless told otherwise, the external plugins too."""
    pm = pluggy.PluginManager("aima")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name)
    if load_external:
        _load_external(pm)
    return pm


def _load_external(pm: pluggy.PluginManager) -> None:
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    for name in (n.strip() for n in wanted.split(",")):
        if name and pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name) == 0:
            logger.warning("plugin %s named in %s is not installed", name, LOAD_PLUGINS_ENV)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    analyzers: tuple[str, ...]


class AnalyzerRegistry:
    """The analyzers (media and case analyzers) and text embedders every loaded plugin registered, by name.

    Media and case analyzers share one namespace: a task names its analyzer, whichever kind it is.
    """

    def __init__(self, pm: pluggy.PluginManager, config: PluginConfig | None = None) -> None:
        self._pm = pm
        self._analyzers: dict[str, Analyzer] = {}
        self._case_analyzers: dict[str, CaseAnalyzer] = {}
        self._owners: dict[str, str] = {}
        self._embedders: dict[str, Embedder] = {}
        plugin_config: Mapping[str, Mapping[str, Any]] = config or {}
        for impl in pm.hook.register_analyzers.get_hookimpls():
            owner = pm.get_name(impl.plugin) or impl.plugin_name

            def register(analyzer: Analyzer | CaseAnalyzer, _owner: str = owner) -> None:
                if analyzer.name in self._owners:
                    raise ValueError(f"analyzer {analyzer.name!r} registered twice ({_owner})")
                if isinstance(analyzer, CaseAnalyzer):
                    self._case_analyzers[analyzer.name] = analyzer
                elif isinstance(analyzer, Analyzer):
                    self._analyzers[analyzer.name] = analyzer
                else:
                    raise TypeError(f"plugin {_owner} registered {analyzer!r}, neither an Analyzer nor a CaseAnalyzer")
                self._owners[analyzer.name] = _owner

            impl.function(**_arguments(impl, register=register, config=plugin_config))
        for impl in pm.hook.register_embedders.get_hookimpls():

            def register_embedder(embedder: Embedder) -> None:
                if embedder.name in self._embedders:
                    raise ValueError(f"embedder {embedder.name!r} registered twice")
                self._embedders[embedder.name] = embedder

            impl.function(**_arguments(impl, register=register_embedder, config=plugin_config))

    def embedder(self) -> Embedder | None:
        """The text embedder: the first registered (by name), or None when no plugin offers one."""
        return self._embedders[min(self._embedders)] if self._embedders else None

    def embedders(self) -> list[Embedder]:
        return [self._embedders[name] for name in sorted(self._embedders)]

    def get(self, name: str) -> Analyzer:
        try:
            return self._analyzers[name]
        except KeyError:
            raise UnknownAnalyzer(name, self._analyzers) from None

    def all(self) -> list[Analyzer]:
        """The media analyzers, by name."""
        return [self._analyzers[name] for name in sorted(self._analyzers)]

    def names(self) -> list[str]:
        """The media analyzers' names."""
        return sorted(self._analyzers)

    def get_case(self, name: str) -> CaseAnalyzer:
        try:
            return self._case_analyzers[name]
        except KeyError:
            raise UnknownAnalyzer(name, self._case_analyzers) from None

    def case_analyzers(self) -> list[CaseAnalyzer]:
        """The case analyzers (a dossier's fusion), by name."""
        return [self._case_analyzers[name] for name in sorted(self._case_analyzers)]

    def is_case_analyzer(self, name: str) -> bool:
        return name in self._case_analyzers

    def plugins(self) -> list[PluginInfo]:
        versions = {self._pm.get_name(plugin): dist.version for plugin, dist in self._pm.list_plugin_distinfo()}
        infos = []
        for plugin in self._pm.get_plugins():
            name = self._pm.get_name(plugin) or repr(plugin)
            analyzers = tuple(a for a, owner in sorted(self._owners.items()) if owner == name)
            version = versions.get(name) or _builtin_version(name)
            infos.append(PluginInfo(name=name, version=version, analyzers=analyzers))
        return sorted(infos, key=lambda info: info.name)


def _arguments(impl: pluggy.HookImpl, **offered: Any) -> dict[str, Any]:
    """The hook's arguments that this implementation takes (pluggy lets an implementation leave some out)."""
    return {name: value for name, value in offered.items() if name in impl.argnames}


def _builtin_version(name: str) -> str | None:
    if name in DEFAULT_PLUGINS:
        return importlib.metadata.version("aima")
    return None
