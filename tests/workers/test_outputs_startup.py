"""Workers check the models of what they run when they start: a missing one stops `aima worker` at once, with the
plugin's message on stderr, instead of failing tasks later."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import aima
from aima.analysis import AnalysisInput, Analyzer, Embedder, ModelNotInstalled
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.settings import Settings
from aima.testing.workers import worker_environment
from aima.workers.process import check_models
from tests.workers import outputs_missing_model

PLUGIN = outputs_missing_model.__name__
CHILD = (
    "import sys; from aima import cli, plugins; "
    f"plugins.DEFAULT_PLUGINS = (*plugins.DEFAULT_PLUGINS, {PLUGIN!r}); "
    "cli.app(['worker', *sys.argv[1:]], prog_name='aima')"
)


def test_aima_worker_refuses_to_start_when_a_model_is_missing(settings: Settings) -> None:
    env = {**os.environ, **settings.child_environment(), **worker_environment(settings), "AIMA_LOAD_PLUGINS": ""}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "--burst"], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"aima worker: a model is missing: analyzer needs-a-model: {outputs_missing_model.MESSAGE}"
    )
    assert "Traceback" not in done.stderr


class Empty(BaseModel):
    pass


class Checked(Analyzer):
    version = "1.0"
    result_model = Empty

    def __init__(self, name: str, runs_on: str, missing: bool) -> None:
        self.name = name  # type: ignore[misc]
        self.runs_on = runs_on  # type: ignore[misc]
        self.missing = missing

    def check(self) -> None:
        if self.missing:
            raise ModelNotInstalled(f"{self.name} weights missing; install them with: get {self.name}")

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        return Empty()


class SmallEmbedder(Embedder):
    name = "small"
    dimension: ClassVar[int] = 128

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0] + [0.0] * 127 for _ in texts]


def registry(*analyzers: Analyzer, embedder: Embedder | None = None) -> AnalyzerRegistry:
    class Plugin:
        @aima.hookimpl
        def register_analyzers(self, register: Any) -> None:
            for analyzer in analyzers:
                register(analyzer)

        @aima.hookimpl
        def register_embedders(self, register: Any) -> None:
            if embedder is not None:
                register(embedder)

    pm = create_plugin_manager(load_external=False)
    pm.register(Plugin(), "checked")
    return AnalyzerRegistry(pm)


def test_only_the_analyzers_a_worker_runs_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    analyzers = registry(Checked("faces", "cpu", missing=True), Checked("llava", "llava", missing=True))
    with pytest.raises(ModelNotInstalled) as raised:
        check_models(analyzers, ["cpu"])
    assert str(raised.value) == "analyzer faces: faces weights missing; install them with: get faces"
    check_models(registry(Checked("llava", "llava", missing=True)), ["cpu"])
    assert "no text embedder is installed" in caplog.text


def test_the_embedder_is_checked_for_its_dimension() -> None:
    with pytest.raises(ModelNotInstalled, match="embedder small: it makes 128-dimensional vectors"):
        check_models(registry(Checked("ok", "cpu", missing=False), embedder=SmallEmbedder()), ["cpu"])
