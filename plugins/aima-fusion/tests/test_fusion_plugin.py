"""The plugin as a worker finds it: through the ``aima`` entry point, configured by ``[plugins.fusion]``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fusion_cases import sample_case

from aima.analysis import ModelNotInstalled
from aima.dossier import Dossier
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima_fusion import FusionAnalyzer, FusionSettings
from aima_fusion.tokens import EstimatedTokens, TokenizerTokens


def test_the_entry_point_registers_the_case_analyzer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_LOAD_PLUGINS", "fusion")
    registry = AnalyzerRegistry(create_plugin_manager(), {"fusion": {"endpoint": "llama-70b"}})

    analyzer = registry.get_case("fusion")
    assert isinstance(analyzer, FusionAnalyzer)
    assert analyzer.runs_on == "llama-70b"  # its tasks go to the queue of its endpoint
    assert FusionAnalyzer.runs_on == "llama"
    assert analyzer.result_model is Dossier
    analyzer.check()  # nothing to install by default


def test_settings_from_the_environment() -> None:
    settings = FusionSettings.model_validate(
        {"max_input_tokens": "", "vision_analyzers": "llava, qwen-vl", "answer_tokens": "3000", "tokenizer": "none"}
    )
    assert settings.max_input_tokens is None and settings.tokenizer is None
    assert settings.vision_analyzers == ("llava", "qwen-vl") and settings.answer_tokens == 3000
    with pytest.raises(ValueError, match="endpoint"):
        FusionSettings(endpoint="Not A Name")


def test_a_missing_tokenizer_stops_the_worker(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalled, match="does not exist"):
        FusionAnalyzer(FusionSettings(tokenizer=tmp_path / "tokenizer.json")).check()


def test_tokens_are_counted_with_a_configured_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "van": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    analyzer = FusionAnalyzer(FusionSettings(tokenizer=path, token_margin=0.0))
    analyzer.check()

    counter = analyzer._make_counter()
    assert isinstance(counter, TokenizerTokens)
    assert counter.count("a white van , parked") == 5  # words and punctuation, one token each here


def test_the_estimate_errs_on_the_large_side() -> None:
    estimate = EstimatedTokens(3.5, 0.1)
    assert estimate.count("x" * 350) == 110
    assert estimate.count("Привет") == 7  # each character outside ASCII counts as a token
    prompt = json.dumps([e.summary for e in sample_case().evidence])
    assert estimate.count(prompt) > len(prompt) / 4  # Llama 3 runs at about 4 characters a token on English
