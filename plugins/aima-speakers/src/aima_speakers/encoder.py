"""Resemblyzer's GE2E voice encoder without torch: its weights read from the checkpoint, its network in onnxruntime.

The network is a 3-layer LSTM (40 mel channels in, 256 hidden) whose last hidden state goes through a linear layer,
a ReLU and L2 normalisation (`resemblyzer.VoiceEncoder.forward`). An utterance is cut into partial utterances of
160 frames (1.6 s) at 1.3 per second; their embeddings are averaged and normalised (`embed_utterance`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from aima_speakers.mel import HOP_LENGTH, N_MELS, SAMPLE_RATE, mel_spectrograms
from aima_speakers.torch_weights import CheckpointUnreadable, load_state_dict

PARTIAL_FRAMES = 160
EMBEDDING_SIZE = 256
INT16_MAX = 2**15 - 1
NORM_TARGET_DBFS = -30.0
#: Waveforms (windows) embedded at once: their mel spectrograms share one matrix product, their partials one run.
BATCH = 64

Array = npt.NDArray[np.float32]


def bundled_weights_path() -> Path | None:
    """``pretrained.pt`` of the installed Resemblyzer distribution, found without importing it (it imports torch)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def volume_gain(wav: Array, target_dbfs: float = NORM_TARGET_DBFS) -> float:
    """The factor that raises (never lowers) the level to `target_dbfs`, as Resemblyzer's `preprocess_wav` does."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) * INT16_MAX if wav.size else 0.0
    if rms == 0.0:
        return 1.0
    change_db = target_dbfs - 20.0 * np.log10(rms / INT16_MAX)
    return float(10 ** (change_db / 20.0)) if change_db > 0 else 1.0


def normalize_volume(wav: Array, target_dbfs: float = NORM_TARGET_DBFS) -> Array:
    return (wav * np.float32(volume_gain(wav, target_dbfs))).astype(np.float32)


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[slice]:
    """Mel-frame slices of the partial utterances of a waveform (`VoiceEncoder.compute_partial_slices`)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP_LENGTH))
    frame_step = int(np.round((SAMPLE_RATE / rate) / HOP_LENGTH))
    if not 0 < frame_step <= PARTIAL_FRAMES:
        raise ValueError(f"partial utterance rate {rate} out of range")
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP_LENGTH) / (PARTIAL_FRAMES * HOP_LENGTH)
    if coverage < min_coverage and len(slices) > 1:
        slices.pop()
    return slices


class VoiceEncoder:
    """Embeds speech as 256-d unit vectors; same-speaker utterances lie close in cosine similarity.

    The network runs in onnxruntime, built from the checkpoint at load time, with its own small thread pool: BLAS
    threads of numpy would fight the worker's other analyzers for the cores (several times slower under load).
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> VoiceEncoder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        graph = build_graph(load_state_dict(path), path)
        return cls(ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]))

    def embed_mels(self, mels: Array) -> Array:
        """Embeddings (B, 256) of a batch of partial utterances (B, frames, 40)."""
        (embeddings,) = self._session.run(None, {"mels": np.ascontiguousarray(mels, dtype=np.float32)})
        # An all-zero ReLU output has no direction (NaN after normalisation): it then adds nothing to an average.
        result: Array = np.nan_to_num(embeddings, nan=0.0)
        return result

    def embed_utterances(
        self,
        wavs: Sequence[Array],
        rate: float = 1.3,
        min_coverage: float = 0.75,
        progress: Callable[[int], None] | None = None,
    ) -> Array:
        """One embedding per waveform: its partial utterances' embeddings, averaged and normalised
        (`VoiceEncoder.embed_utterance`). Waveforms go through in batches, so memory stays bounded on long media;
        `progress` hears how many are done after each batch."""
        embeddings = np.zeros((len(wavs), EMBEDDING_SIZE), dtype=np.float32)
        for first in range(0, len(wavs), BATCH):
            chunk = wavs[first : first + BATCH]
            slices = [partial_slices(len(wav), rate, min_coverage) for wav in chunk]
            padded = [
                np.pad(w, (0, max(0, s[-1].stop * HOP_LENGTH - len(w)))) for w, s in zip(chunk, slices, strict=True)
            ]
            mels = mel_spectrograms(padded)
            partials = np.stack([mel[part] for mel, parts in zip(mels, slices, strict=True) for part in parts])
            owners = np.repeat(np.arange(len(chunk)), [len(parts) for parts in slices])
            sums = np.zeros((len(chunk), EMBEDDING_SIZE), dtype=np.float64)
            np.add.at(sums, owners, self.embed_mels(partials))
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            embeddings[first : first + len(chunk)] = sums / np.maximum(norms, 1e-12)
            if progress is not None:
                progress(first + len(chunk))
        return embeddings


def build_graph(state: Mapping[str, npt.NDArray[Any]], path: Path) -> bytes:
    """The ONNX model of `resemblyzer.VoiceEncoder.forward`: LSTM layers, then linear, ReLU and L2 normalisation."""
    try:
        layers = sum(1 for name in state if name.startswith("lstm.weight_ih_l"))
        weights = [
            [_to_onnx_gates(state[f"lstm.{kind}_l{n}"]) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            for n in range(layers)
        ]
        linear_w, linear_b = state["linear.weight"], state["linear.bias"]
    except KeyError as exc:
        raise CheckpointUnreadable(f"{path} is not a Resemblyzer voice encoder: {exc} is missing") from exc
    if not layers or linear_w.shape[0] != EMBEDDING_SIZE:
        raise CheckpointUnreadable(f"{path} is not a Resemblyzer voice encoder of {EMBEDDING_SIZE} dimensions")
    hidden = weights[0][1].shape[1]
    tensors = [("squeeze_dir", np.array([1], np.int64)), ("squeeze_layer", np.array([0], np.int64))]
    nodes = [helper.make_node("Transpose", ["mels"], ["x0"], perm=[1, 0, 2])]  # time-major for the LSTM op
    for n, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        tensors += [(f"w{n}", w_ih[None]), (f"r{n}", w_hh[None]), (f"b{n}", np.concatenate([b_ih, b_hh])[None])]
        nodes.append(
            helper.make_node("LSTM", [f"x{n}", f"w{n}", f"r{n}", f"b{n}"], [f"y{n}", f"h{n}"], hidden_size=hidden)
        )
        nodes.append(helper.make_node("Squeeze", [f"y{n}", "squeeze_dir"], [f"x{n + 1}"]))
    tensors += [("linear_w", linear_w.T), ("linear_b", linear_b)]
    nodes += [
        helper.make_node("Squeeze", [f"h{layers - 1}", "squeeze_layer"], ["last"]),
        helper.make_node("Gemm", ["last", "linear_w", "linear_b"], ["linear"]),
        helper.make_node("Relu", ["linear"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "resemblyzer_voice_encoder",
        [helper.make_tensor_value_info("mels", TensorProto.FLOAT, ["batch", "frames", N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_SIZE])],
        [
            numpy_helper.from_array(np.ascontiguousarray(a, dtype=a.dtype if a.dtype == np.int64 else np.float32), name)
            for name, a in tensors
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _to_onnx_gates(weight: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """PyTorch stacks LSTM gates as input, forget, cell, output; ONNX as input, output, forget, cell."""
    i, f, g, o = np.split(weight, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)
