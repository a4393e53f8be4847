"""Endpoint settings: from aima.toml and the environment, validated strictly, secrets kept secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aima.inference import EndpointConfigError, endpoints_for
from aima.settings import ConfigFileError, EndpointSettings, InferenceSettings, Settings


def _settings(**kwargs: Any) -> Settings:
    return Settings(environment="development", **kwargs)


def test_endpoints_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAVA__URL", "http://tgi.internal:8080/")
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAVA__PROTOCOL", "tgi")
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAVA__MODEL", "llava-hf/llava-v1.6-34b-hf")
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAVA__MAX_CONCURRENCY", "32")
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAVA__API_KEY", "hf_secret_value")
    monkeypatch.setenv("AIMA_INFERENCE__FUSION_ENDPOINT", "llava")
    inference = _settings().inference
    llava = inference.endpoints["llava"]
    assert llava.url == "http://tgi.internal:8080" and llava.max_concurrency == 32
    assert llava.api_key is not None and llava.api_key.get_secret_value() == "hf_secret_value"
    assert "hf_secret_value" not in repr(inference) and "hf_secret_value" not in str(llava)
    endpoints = endpoints_for(_settings())
    assert endpoints.vision is endpoints.fusion is endpoints["llava"]


def test_endpoints_from_the_configuration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aima.toml"
    config.write_text(
        """
[inference]
vision_endpoint = "llava"
fusion_endpoint = "llama"

[inference.endpoints.llava]
url = "http://gpu-1:8080"
protocol = "tgi"
model = "llava-hf/llava-v1.6-34b-hf"
max_concurrency = 32
read_timeout_s = 90

[inference.endpoints.llama]
url = "http://gpu-2:8000"
protocol = "openai"
model = "meta-llama/Meta-Llama-3.1-70B-Instruct"
"""
    )
    monkeypatch.setenv("AIMA_CONFIG_FILE", str(config))
    monkeypatch.setenv("AIMA_INFERENCE__ENDPOINTS__LLAMA__MAX_CONCURRENCY", "64")  # the environment wins
    settings = _settings()
    endpoints = endpoints_for(settings)
    assert endpoints.vision.protocol == "tgi" and endpoints.vision.settings.read_timeout_s == 90
    assert endpoints.fusion.protocol == "openai" and endpoints.fusion.settings.max_concurrency == 64
    assert endpoints.fusion.settings.url == "http://gpu-2:8000"


def test_a_misspelt_key_in_the_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aima.toml"
    config.write_text('[inference.endpoints.llava]\nurl = "http://gpu:8080"\nprotocol = "tgi"\nmax_concurency = 3\n')
    monkeypatch.setenv("AIMA_CONFIG_FILE", str(config))
    with pytest.raises(ConfigFileError, match=r"inference\.endpoints\.llava\.max_concurency"):
        _settings()


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"url": "ftp://x", "protocol": "tgi"}, "URL scheme"),
        ({"url": "http://x?key=1", "protocol": "tgi"}, "query"),
        ({"url": "http://x", "protocol": "grpc"}, "protocol"),
        ({"url": "http://x", "protocol": "openai"}, "model is required"),
        ({"url": "http://x", "protocol": "openai", "model": "m", "prompt_format": "chatml"}, "tgi' only"),
        ({"url": "http://x", "protocol": "tgi", "prompt_format": "alpaca"}, "prompt_format"),
        ({"url": "http://x", "protocol": "tgi", "max_concurrency": 0}, "max_concurrency"),
        ({"url": "http://x", "protocol": "tgi", "read_timeout_s": 700}, "read_timeout_s"),
        ({"url": "http://x", "protocol": "tgi", "timeout": 3}, "Extra inputs"),
    ],
)
def test_invalid_endpoint_settings(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        EndpointSettings.model_validate(values)


def test_invalid_names() -> None:
    with pytest.raises(ValidationError, match="endpoint name"):
        InferenceSettings.model_validate({"endpoints": {"LLaVA!": {"url": "http://x", "protocol": "tgi"}}})
    with pytest.raises(ValidationError, match="vision_endpoint"):
        InferenceSettings.model_validate({"vision_endpoint": "my vision"})


def test_tgi_needs_a_known_prompt_format() -> None:
    unknown = InferenceSettings.model_validate({"endpoints": {"x": {"url": "http://x", "protocol": "tgi"}}})
    with pytest.raises(EndpointConfigError, match="set prompt_format"):
        endpoints_for(unknown)
    named = {"url": "http://x", "protocol": "tgi", "model": "my/model", "prompt_format": "llama3"}
    assert endpoints_for(InferenceSettings.model_validate({"endpoints": {"x": named}}))["x"].protocol == "tgi"


def test_a_misspelt_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_INFERENCE__VISON_ENDPOINT", "llava")
    with pytest.raises(ValidationError, match=r"inference\.vison_endpoint"):
        _settings()
