"""Fixtures for the embedded-server tests: each test starts its own servers on free ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from aima.embedded import make_runtime_root


@pytest.fixture(scope="session", autouse=True)
def _clean_redis_prefix() -> Iterator[None]:
    """Shadows the suite-wide autouse fixture: these tests must not start the session's shared servers."""
    yield


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A root folder for servers; as root one `nobody` can traverse (PostgreSQL runs as `nobody` then)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = make_runtime_root("aima-embedded-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
