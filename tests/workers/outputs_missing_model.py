"""A plugin for `test_outputs_startup`: an analyzer on the CPU whose model is not installed.

A child process adds it to the built-in plugins (as `aima.testing.workers` does for the test analyzers) and runs
`aima worker`, which must refuse to start.
"""

from __future__ import annotations

from pydantic import BaseModel

from aima.analysis import AnalysisInput, Analyzer, ModelNotInstalled, RegisterAnalyzer
from aima.hookspecs import hookimpl

MESSAGE = "model file /nowhere/faces.onnx is missing; install it with: aima-faces download"


class Nothing(BaseModel):
    pass


class NeedsAModel(Analyzer):
    name = "needs-a-model"
    version = "1.0"
    needs = frozenset()
    result_model = Nothing

    def check(self) -> None:
        raise ModelNotInstalled(MESSAGE)

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        raise AssertionError("a worker whose model is missing must not run tasks")


@hookimpl
def register_analyzers(register: RegisterAnalyzer) -> None:
    register(NeedsAModel())
