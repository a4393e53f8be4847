"""Fixtures of the whisper plugin's tests: a tiny multilingual model built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from whisper_tiny_model import build_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("whisper-tiny") / "model")
