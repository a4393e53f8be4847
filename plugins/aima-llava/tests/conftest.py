"""Fixtures of the vision plugin's tests: one test model server for the session (reset before each test), both
protocols, and small JPEG keyframes made by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from llava_support import MODEL

from aima.testing.model_server import ModelServer


@pytest.fixture(scope="session")
def _llava_server() -> Iterator[ModelServer]:
    with ModelServer(model=MODEL) as server:
        yield server


@pytest.fixture
def server(_llava_server: ModelServer) -> ModelServer:
    # A request the previous test cancelled may still be on its way: let it arrive and end before the reset, so it
    # is not counted as this test's.
    time.sleep(0.2)
    _llava_server.wait_idle()
    _llava_server.reset()
    return _llava_server


@pytest.fixture(params=["tgi", "openai"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)
