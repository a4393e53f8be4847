"""The BERT encoder with mean pooling and L2 normalisation as one ONNX graph, built from safetensors weights.

The graph computes what sentence-transformers computes for all-MiniLM-L6-v2 (Transformer, then mean Pooling over
the attention mask, then Normalize): inputs ``input_ids`` and ``attention_mask`` (int64, batch x sequence), output
``embeddings`` (float32, batch x hidden, unit length). Token type ids are always 0 for single sentences, so the
first token-type embedding is added as a constant. Only standard ONNX operators (opset 18) are used; ONNX Runtime
fuses the layer norms, GELUs and attention itself when it loads the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from aima_minilm.model_files import BertConfig

#: Bump when the graph changes, so that graphs cached by an older version are rebuilt.
GRAPH_VERSION = "bert-mean-l2/1"
OPSET = 18

Weights = Mapping[str, npt.NDArray[np.float32]]


class _Builder:
    """Adds nodes and initialisers with unique names; each method returns its output's name."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, op: str) -> str:
        self._count += 1
        return f"{op.lower()}_{self._count}"

    def op(self, op: str, *inputs: str, **attributes: Any) -> str:
        output = self._name(op)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def const(self, name: str, value: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        """A weight from the file (linear layers' matrices transposed to (in, out) for MatMul)."""
        value = self.weights[name]
        return self.const(name, np.ascontiguousarray(value.T if transpose else value))

    def linear(self, x: str, prefix: str) -> str:
        return self.op(
            "Add", self.op("MatMul", x, self.weight(f"{prefix}.weight", transpose=True)), self.weight(f"{prefix}.bias")
        )

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization",
            x,
            self.weight(f"{prefix}.weight"),
            self.weight(f"{prefix}.bias"),
            axis=-1,
            epsilon=eps,
        )

    def gelu(self, x: str) -> str:
        """The exact (erf) GELU that BERT uses: x/2 * (1 + erf(x / sqrt 2))."""
        half = self.op("Mul", x, self.const(self._name("half"), 0.5))
        erf = self.op("Erf", self.op("Div", x, self.const(self._name("sqrt2"), math.sqrt(2.0))))
        return self.op("Mul", half, self.op("Add", erf, self.const(self._name("one"), 1.0)))


def _attention(b: _Builder, x: str, mask_bias: str, prefix: str, config: BertConfig) -> str:
    heads, size = config.num_heads, config.head_size
    split = b.const(f"{prefix}.split_heads", [0, 0, heads, size], np.int64)
    merge = b.const(f"{prefix}.merge_heads", [0, 0, config.hidden_size], np.int64)

    def project(name: str, perm: list[int]) -> str:
        return b.op("Transpose", b.op("Reshape", b.linear(x, f"{prefix}.self.{name}"), split), perm=perm)

    query = project("query", [0, 2, 1, 3])  # batch, head, sequence, size
    key = project("key", [0, 2, 3, 1])  # batch, head, size, sequence
    value = project("value", [0, 2, 1, 3])
    scores = b.op("Mul", b.op("MatMul", query, key), b.const(f"{prefix}.scale", 1.0 / math.sqrt(size)))
    probabilities = b.op("Softmax", b.op("Add", scores, mask_bias), axis=-1)
    context = b.op("MatMul", probabilities, value)
    merged = b.op("Reshape", b.op("Transpose", context, perm=[0, 2, 1, 3]), merge)
    return b.layer_norm(
        b.op("Add", b.linear(merged, f"{prefix}.output.dense"), x), f"{prefix}.output.LayerNorm", config.layer_norm_eps
    )


def _feed_forward(b: _Builder, x: str, prefix: str, eps: float) -> str:
    inner = b.gelu(b.linear(x, f"{prefix}.intermediate.dense"))
    out = b.linear(inner, f"{prefix}.output.dense")
    return b.layer_norm(b.op("Add", out, x), f"{prefix}.output.LayerNorm", eps)


def build_graph(weights: Weights, config: BertConfig) -> onnx.ModelProto:
    """The sentence-embedding graph for these weights (HF BertModel names, with or without a ``bert.`` prefix)."""
    if "embeddings.word_embeddings.weight" not in weights:
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    b = _Builder(weights)
    eps = config.layer_norm_eps

    # Embeddings: word + position + token type 0, then a layer norm.
    words = b.op("Gather", b.weight("embeddings.word_embeddings.weight"), "input_ids")
    length = b.op("Gather", b.op("Shape", "input_ids"), b.const("one_index", 1, np.int64), axis=0)
    positions = b.op("Range", b.const("zero_i64", 0, np.int64), length, b.const("one_i64", 1, np.int64))
    position_embeddings = b.op("Gather", b.weight("embeddings.position_embeddings.weight"), positions)
    token_type = b.const("embeddings.token_type_0", weights["embeddings.token_type_embeddings.weight"][0])
    summed = b.op("Add", b.op("Add", words, position_embeddings), token_type)
    x = b.layer_norm(summed, "embeddings.LayerNorm", eps)

    # Padding is kept out of attention by adding the lowest float to its scores (as transformers does).
    mask = b.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    lowest = b.const("mask_lowest", np.finfo(np.float32).min)
    padding = b.op("Sub", b.const("mask_one", 1.0), mask)
    mask_bias = b.op("Unsqueeze", b.op("Mul", padding, lowest), b.const("mask_axes", [1, 2], np.int64))

    for layer in range(config.num_layers):
        prefix = f"encoder.layer.{layer}"
        x = _attention(b, x, mask_bias, f"{prefix}.attention", config)
        x = _feed_forward(b, x, prefix, eps)

    # Mean over the real tokens, then unit length (sentence-transformers' Pooling and Normalize).
    token_mask = b.op("Unsqueeze", mask, b.const("token_axis", [2], np.int64))
    sequence_axis = b.const("sequence_axis", [1], np.int64)
    total = b.op("ReduceSum", b.op("Mul", x, token_mask), sequence_axis, keepdims=0)
    count = b.op("Max", b.op("ReduceSum", token_mask, sequence_axis, keepdims=0), b.const("min_count", 1e-9))
    mean = b.op("Div", total, count)
    norm = b.op(
        "Max", b.op("ReduceL2", mean, b.const("hidden_axis", [1], np.int64), keepdims=1), b.const("min_norm", 1e-12)
    )
    b.nodes.append(helper.make_node("Div", [mean, norm], ["embeddings"], name="normalize"))

    graph = helper.make_graph(
        b.nodes,
        "sentence_embedding",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", config.hidden_size])],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aima-minilm")
    model.ir_version = 8  # readable by ONNX Runtime 1.15 and later
    onnx.checker.check_model(model, full_check=True)
    return model
