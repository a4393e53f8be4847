"""Fixtures for the model-endpoint tests: one test model server for the session, reset before each test.

These tests need none of the suite's shared servers (PostgreSQL, Redis, ...).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aima.testing.model_server import ModelServer
from tests.inference.support import MODEL


@pytest.fixture(scope="session", autouse=True)
def _clean_redis_prefix() -> Iterator[None]:
    """Shadows the suite-wide autouse fixture: these tests use no Redis."""
    yield


@pytest.fixture(scope="session")
def _server() -> Iterator[ModelServer]:
    with ModelServer(model=MODEL) as server:
        yield server


@pytest.fixture
def server(_server: ModelServer) -> ModelServer:
    _server.wait_idle()
    _server.reset()
    _server.max_total_tokens = 8192
    return _server


@pytest.fixture(params=["tgi", "openai"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)
