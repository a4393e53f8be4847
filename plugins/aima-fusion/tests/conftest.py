"""Fixtures of the fusion plugin's tests: one test model server serving Llama 3.1 for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fusion_cases import MODEL, ScriptedModel

from aima.testing.model_server import ModelServer


@pytest.fixture(scope="session")
def _fusion_server() -> Iterator[ModelServer]:
    with ModelServer(model=MODEL) as server:
        yield server


@pytest.fixture
def server(_fusion_server: ModelServer) -> ModelServer:
    """The server, reset, answering with a fresh `ScriptedModel` (``server.answer``)."""
    _fusion_server.wait_idle()
    _fusion_server.reset()
    _fusion_server.max_total_tokens = 65536
    _fusion_server.answer = ScriptedModel()
    return _fusion_server


@pytest.fixture(params=["tgi", "openai"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)
