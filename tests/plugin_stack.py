"""The installed analyzer plugins as the end-to-end tests load them: through their entry points, configured as a
worker's settings would, with faces on the tiny pack `aima_faces.testing` builds (no real face pack can be downloaded
here) found by the packaged Haar cascade."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from aima.plugins import LOAD_PLUGINS_ENV, AnalyzerRegistry, create_plugin_manager


def installed_plugins(tmp_path_factory: pytest.TempPathFactory, plugins: Sequence[str]) -> AnalyzerRegistry:
    """The named plugins that are installed (a test skips on those it needs but does not find)."""
    from aima_faces.testing import build_tiny_pack

    pack = build_tiny_pack(tmp_path_factory.mktemp("faces") / "tiny")
    config: dict[str, dict[str, Any]] = {
        "faces": {"pack_dir": str(pack), "detector": "haar"},
        "minilm": {"cache_dir": str(tmp_path_factory.mktemp("minilm"))},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOAD_PLUGINS_ENV, ",".join(plugins))  # the session turns external plugins off
        return AnalyzerRegistry(create_plugin_manager(), config)
