"""A tiny insightface model pack built from ONNX operators, so that tests run the real insightface code offline.

The detector has SCRFD's layout (9 outputs: scores, box distances and keypoint offsets for strides 8, 16 and 32 with
two anchors each) and "detects" bright squares: at stride 32 a cell whose mean brightness is near white scores high,
its box is the cell and its five keypoints sit where ArcFace's template puts eyes, nose and mouth. Strides 8 and 16
never fire. The recogniser has ArcFace's shape ([N, 3, 112, 112] -> [N, 512]): an 8x8 average pool and a fixed random
projection, so that different crops give different vectors and equal crops equal ones. Both go through insightface's
routing by output shapes, SCRFD's decoding, `norm_crop` alignment and `ArcFaceONNX.get_feat`, as a real pack would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

#: Cell size at which the tiny detector fires: a white square aligned to this grid is found as one face.
TINY_CELL_PX = 32
TINY_DETECTOR_FILE = "det_tiny.onnx"
TINY_RECOGNIZER_FILE = "w_tiny.onnx"
#: ArcFace's five-point template for a 112x112 crop (left eye, right eye, nose, left and right mouth corner).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
_STRIDES = (8, 16, 32)
_ANCHORS = 2
_OPSET = 13


def tiny_recognizer_weights(seed: int = 7) -> NDArray[np.float32]:
    """The recogniser's projection (588 pooled values -> 512), also used by tests to recompute an embedding."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3 * 14 * 14, 512)).astype(np.float32)


def build_tiny_pack(directory: Path, *, with_recognizer: bool = True) -> Path:
    """Write the tiny detector (and recogniser) into `directory`, which becomes an insightface pack directory."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector(), str(directory / TINY_DETECTOR_FILE))
    if with_recognizer:
        onnx.save(_recognizer(tiny_recognizer_weights()), str(directory / TINY_RECOGNIZER_FILE))
    return directory


def _head(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    pooled: str,
    name: str,
    weight: NDArray[np.float32],
    bias: NDArray[np.float32],
    width: int,
) -> str:
    """A 1x1 convolution over the pooled image, laid out as SCRFD's [cells * anchors, width] output."""
    inits.append(numpy_helper.from_array(weight, f"{name}_w"))
    inits.append(numpy_helper.from_array(bias, f"{name}_b"))
    inits.append(numpy_helper.from_array(np.array([-1, width], dtype=np.int64), f"{name}_shape"))
    nodes.append(helper.make_node("Conv", [pooled, f"{name}_w", f"{name}_b"], [f"{name}_conv"], name=f"{name}_conv"))
    last = f"{name}_conv"
    if name.startswith("score"):
        nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_sig"], name=f"{name}_sig"))
        last = f"{name}_sig"
    nodes.append(helper.make_node("Transpose", [last], [f"{name}_t"], perm=[0, 2, 3, 1], name=f"{name}_t"))
    nodes.append(helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [name], name=f"{name}_flat"))
    return name


def _detector() -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    keypoints = (ARCFACE_TEMPLATE_112 / 112.0).reshape(-1)
    for stride in _STRIDES:
        pooled = f"pool{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["input.1"],
                [pooled],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
                name=pooled,
            )
        )
        fires = stride == TINY_CELL_PX
        # Input is (x - 127.5) / 128 per channel: white is ~1.0, black ~-1.0. score = sigmoid(40 * (mean - 0.95)).
        score_w = np.full((_ANCHORS, 3, 1, 1), 40.0 / 3 if fires else 0.0, dtype=np.float32)
        score_b = np.full((_ANCHORS,), -38.0 if fires else -30.0, dtype=np.float32)
        bbox_b = np.tile(np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32), _ANCHORS)
        kps_b = np.tile(keypoints.astype(np.float32), _ANCHORS)
        for kind, bias, width in (("score", score_b, 1), ("bbox", bbox_b, 4), ("kps", kps_b, 10)):
            weight = score_w if kind == "score" else np.zeros((bias.shape[0], 3, 1, 1), dtype=np.float32)
            outputs[kind].append(_head(nodes, inits, pooled, f"{kind}_{stride}", weight, bias, width))
    names = outputs["score"] + outputs["bbox"] + outputs["kps"]
    widths = [1] * 3 + [4] * 3 + [10] * 3
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n_{name}", width])
            for name, width in zip(names, widths, strict=True)
        ],
        inits,
    )
    return _model(graph)


def _recognizer(weights: NDArray[np.float32]) -> onnx.ModelProto:
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "projection"], ["fc1"], name="project"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", 512])],
        [numpy_helper.from_array(weights, "projection")],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="aima-faces-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
