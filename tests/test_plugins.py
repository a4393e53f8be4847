import pytest
from pydantic import BaseModel

import aima
from aima.analysis import AnalysisInput, Analyzer, MediaKind
from aima.errors import UnknownAnalyzer
from aima.plugins import DEFAULT_PLUGINS, AnalyzerRegistry, create_plugin_manager


class Echo(BaseModel):
    media_id: str


class EchoAnalyzer(Analyzer):
    name = "echo"
    version = "0.1"
    media_kinds = frozenset({MediaKind.IMAGE})
    result_model = Echo

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        return Echo(media_id=item.media_id)


class EchoPlugin:
    @aima.hookimpl
    def register_analyzers(self, register):  # type: ignore[no-untyped-def]
        register(EchoAnalyzer())


def test_builtins_are_registered_like_external_plugins() -> None:
    pm = create_plugin_manager(load_external=False)
    assert {pm.get_name(p) for p in pm.get_plugins()} == set(DEFAULT_PLUGINS)
    registry = AnalyzerRegistry(pm)
    assert "media-probe" in registry.names()
    [builtin] = registry.plugins()
    assert builtin.analyzers == ("media-probe",)
    assert builtin.version


def test_a_plugin_registered_at_runtime_adds_its_analyzers() -> None:
    pm = create_plugin_manager(load_external=False)
    pm.register(EchoPlugin(), name="echo-plugin")
    try:
        registry = AnalyzerRegistry(pm)
        assert registry.get("echo").version == "0.1"
        assert registry.get("echo").accepts(MediaKind.IMAGE)
        assert not registry.get("echo").accepts(MediaKind.AUDIO)
        assert ("echo",) in [p.analyzers for p in registry.plugins() if p.name == "echo-plugin"]
    finally:
        pm.unregister(name="echo-plugin")


def test_an_analyzer_name_may_be_registered_once() -> None:
    pm = create_plugin_manager(load_external=False)
    pm.register(EchoPlugin(), name="one")
    pm.register(EchoPlugin(), name="two")
    with pytest.raises(ValueError, match="registered twice"):
        AnalyzerRegistry(pm)


def test_unknown_analyzer_lists_the_available_ones() -> None:
    registry = AnalyzerRegistry(create_plugin_manager(load_external=False))
    with pytest.raises(UnknownAnalyzer) as raised:
        registry.get("nope")
    assert "media-probe" in str(raised.value)
    assert raised.value.code == "UNKNOWN_ANALYZER"


def test_load_plugins_env_limits_external_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "")
    pm = create_plugin_manager()
    assert {pm.get_name(p) for p in pm.get_plugins()} == set(DEFAULT_PLUGINS)


def test_every_hook_is_documented() -> None:
    from aima import hookspecs

    for name in ("register_analyzers",):
        assert getattr(hookspecs, name).__doc__
