"""The torch-free voice encoder against what Resemblyzer itself (torch, librosa) computes."""

from __future__ import annotations

import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from speakers_signals import VOICES, synthetic_voice

from aima_speakers.encoder import VoiceEncoder, bundled_weights_path, normalize_volume, partial_slices
from aima_speakers.mel import mel_spectrogram
from aima_speakers.torch_weights import MAGIC_NUMBER, CheckpointUnreadable, load_state_dict

REFERENCE = Path(__file__).parent / "reference" / "resemblyzer_reference.npz"


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    path = bundled_weights_path()
    assert path is not None and path.is_file(), "install the weights: pip install --no-deps Resemblyzer==0.1.4"
    return VoiceEncoder.load(path)


def test_weights_load_without_torch() -> None:
    path = bundled_weights_path()
    assert path is not None
    state = load_state_dict(path)
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    assert state["lstm.weight_hh_l2"].shape == (1024, 256)
    assert state["linear.weight"].shape == (256, 256)
    assert all(v.dtype == np.float32 for v in state.values())
    assert "torch" not in sys.modules


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        for header in (MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, f)
        pickle.dump({"model_state": Exploit()}, f)
    with pytest.raises(CheckpointUnreadable, match=r"builtins\.print"):
        load_state_dict(path)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = bundled_weights_path()
    assert path is not None
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointUnreadable):
        load_state_dict(cut)
    cut.write_bytes(struct.pack("<q", 7))
    with pytest.raises(CheckpointUnreadable):
        load_state_dict(cut)


def test_partial_slices_match_resemblyzer() -> None:
    # compute_partial_slices(n, rate=1.3, min_coverage=0.75): 77-frame steps, a short last partial is dropped.
    assert partial_slices(25_600) == [slice(0, 160)]
    assert partial_slices(8_000) == [slice(0, 160)]
    assert partial_slices(48_000) == [slice(0, 160), slice(77, 237), slice(154, 314)]
    assert partial_slices(40_000) == [slice(0, 160), slice(77, 237)]


def test_mel_spectrogram_matches_librosa() -> None:
    reference = np.load(REFERENCE)
    for name, (f0, formants) in VOICES.items():
        mel = mel_spectrogram(synthetic_voice(f0, formants))
        expected = reference[f"{name}_mel"]
        assert mel.shape == expected.shape
        np.testing.assert_allclose(mel, expected, rtol=1e-3, atol=1e-5 * float(expected.max()))


def test_embeddings_match_resemblyzer(encoder: VoiceEncoder) -> None:
    reference = np.load(REFERENCE)
    wavs = [normalize_volume(synthetic_voice(*VOICES[name])) for name in ("low", "high")]
    low, high = encoder.embed_utterances(wavs)
    np.testing.assert_allclose(low, reference["low_embedding"], atol=1e-4)
    np.testing.assert_allclose(high, reference["high_embedding"], atol=1e-4)
    assert float(low @ high) == pytest.approx(float(reference["low_embedding"] @ reference["high_embedding"]), abs=1e-4)


def test_embeddings_are_unit_vectors_of_256(encoder: VoiceEncoder) -> None:
    wav = normalize_volume(synthetic_voice(*VOICES["low"], seconds=5.0))
    vectors = encoder.embed_utterances([wav, wav[:8000], wav[:48000]])
    assert vectors.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert (vectors >= 0).all()  # ReLU before normalisation


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "librosa", "webrtcvad")),
    reason="the reference implementation needs torch, librosa and webrtcvad",
)
def test_embeddings_match_the_installed_reference_implementation(encoder: VoiceEncoder) -> None:
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.morphology", scipy.ndimage)
    from resemblyzer import VoiceEncoder as TorchEncoder  # type: ignore[import-not-found, unused-ignore]

    reference = TorchEncoder("cpu", verbose=False)
    wav = normalize_volume(synthetic_voice(f0=150.0, formants=(500.0, 1500.0, 2500.0), seconds=4.0))
    np.testing.assert_allclose(encoder.embed_utterances([wav])[0], reference.embed_utterance(wav), atol=1e-4)
