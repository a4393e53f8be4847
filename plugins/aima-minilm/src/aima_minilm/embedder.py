"""The ``minilm-l6`` text embedder: word pieces from `tokenizers`, the encoder on ONNX Runtime.

The ONNX graph is built from the safetensors weights on first use and cached on disk under a key made of the
weights' hash, so later processes load it directly (several workers building at once each write their own temporary
file and rename it into place).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from aima.analysis import Embedder, LazyModel
from aima.errors import InvalidInput
from aima_minilm.graph import GRAPH_VERSION, build_graph
from aima_minilm.model_files import TOKENIZER, WEIGHTS, check_model_dir, fingerprint, read_config
from aima_minilm.settings import MiniLMSettings

logger = logging.getLogger(__name__)

DIMENSION = 384


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aima" / "minilm"


@dataclass(frozen=True)
class _Model:
    tokenizer: Tokenizer
    session: ort.InferenceSession


def cached_graph(directory: Path, cache_dir: Path) -> Path | bytes:
    """The graph's file in the cache, built first when missing; its bytes when the cache cannot be written."""
    key = fingerprint(directory, GRAPH_VERSION)
    path = cache_dir / f"minilm-{key[:24]}.onnx"
    if path.is_file():
        return path
    started = time.perf_counter()
    config = read_config(directory)
    if config.hidden_size != DIMENSION:
        raise InvalidInput(
            f"{directory} holds a {config.hidden_size}-d model; minilm-l6 embeds in {DIMENSION} dimensions."
        )
    data = bytes(build_graph(load_file(str(directory / WEIGHTS)), config).SerializeToString())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".building-", suffix=".onnx", delete=False) as file:
            file.write(data)
        os.chmod(file.name, 0o644)  # readable like any cache file (the temporary file was made private)
        os.replace(file.name, path)
    except OSError as exc:
        logger.warning("cannot cache the MiniLM graph in %s (%s); it is rebuilt by every process", cache_dir, exc)
        return data
    logger.info("built the MiniLM ONNX graph in %.1f s: %s", time.perf_counter() - started, path)
    return path


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 sentence embeddings, as sentence-transformers makes them (mean pooling, unit length)."""

    name = "minilm-l6"
    dimension = DIMENSION

    def __init__(self, settings: MiniLMSettings | None = None) -> None:
        self.settings = settings or MiniLMSettings()
        self._model = LazyModel(self._load)

    def check(self) -> None:
        check_model_dir(self.settings.model_dir)

    def _load(self) -> _Model:
        directory = check_model_dir(self.settings.model_dir)
        graph = cached_graph(directory, self.settings.cache_dir or default_cache_dir())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.settings.threads:
            options.intra_op_num_threads = self.settings.threads
        source = str(graph) if isinstance(graph, Path) else graph
        session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
        tokenizer.enable_truncation(max_length=self.settings.max_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        # Padded to the batch's longest text (the file pads to a fixed 128).
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # noqa: S106 (not a secret)
        return _Model(tokenizer, session)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self._model.get()
        # Like sentence-transformers: texts stripped, batched longest first so that a batch pads little.
        stripped = [str(text).strip() for text in texts]
        order = sorted(range(len(stripped)), key=lambda i: -len(stripped[i]))
        vectors = np.empty((len(stripped), DIMENSION), dtype=np.float32)
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            vectors[batch] = self._embed_batch(model, [stripped[i] for i in batch])
        return vectors.tolist()  # type: ignore[no-any-return]

    @staticmethod
    def _embed_batch(model: _Model, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = model.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        [embeddings] = model.session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(embeddings, dtype=np.float32)
