"""The pack path end to end on a tiny ONNX pack: insightface routes the models by their shapes, decodes SCRFD's outputs,
aligns with norm_crop and embeds with ArcFaceONNX; the analyzer turns that into faces, crops and embeddings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from faces_support import ItemFactory, KeyframeWriter, decode, picture
from numpy.typing import NDArray

from aima.analysis import AnalysisInput, AnalysisOutput
from aima_faces.analyzer import NO_RECOGNIZER_NOTE, FacesAnalyzer
from aima_faces.results import FacesResult
from aima_faces.settings import FaceSettings
from aima_faces.testing import ARCFACE_TEMPLATE_112, TINY_CELL_PX, tiny_recognizer_weights

CELL = TINY_CELL_PX
# insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate; that is upstream's to change.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def frame(
    width: int, height: int, squares: list[tuple[int, int, int]], dots: list[tuple[int, int]] | None = None
) -> NDArray[np.uint8]:
    """A black RGB frame with white squares (x, y, side) and, optionally, a black 4x4 dot in each at (dx, dy)."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    for i, (x, y, side) in enumerate(squares):
        rgb[y : y + side, x : x + side] = 255
        if dots is not None:
            dx, dy = dots[i]
            rgb[y + dy : y + dy + 4, x + dx : x + dx + 4] = 0
    return rgb


def expected_embedding(bgr: NDArray[np.uint8], landmarks: NDArray[np.float32]) -> NDArray[np.float32]:
    """The tiny recogniser's vector, recomputed without insightface: similarity warp onto ArcFace's template,
    (x - 127.5) / 127.5 on RGB, 8x8 average pool, projection, unit length."""
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, ARCFACE_TEMPLATE_112, method=cv2.LMEDS)
    crop = cv2.warpAffine(bgr, matrix, (112, 112), borderValue=0.0)
    rgb = (crop[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    pooled = rgb.transpose(2, 0, 1).reshape(3, 14, 8, 14, 8).mean(axis=(2, 4))
    vector = np.matmul(pooled.reshape(-1), tiny_recognizer_weights())
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float32)


def run(analyzer: FacesAnalyzer, item_: AnalysisInput) -> tuple[FacesResult, AnalysisOutput]:
    output = analyzer.analyze_blocking(item_)
    assert isinstance(output, AnalysisOutput)
    assert isinstance(output.result, FacesResult)
    return output.result, output


def test_insightface_loads_the_pack_from_its_directory_without_downloading(
    tiny_pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import insightface.app.face_analysis as face_analysis
    import insightface.model_zoo.model_zoo as model_zoo
    from insightface.app import FaceAnalysis

    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("insightface tried to download a model")

    monkeypatch.setattr(face_analysis, "ensure_available", no_download)
    monkeypatch.setattr(model_zoo, "download_onnx", no_download)
    app = FaceAnalysis(name=str(tiny_pack), providers=["CPUExecutionProvider"])
    assert {task: type(model).__name__ for task, model in app.models.items()} == {
        "detection": "SCRFD",
        "recognition": "ArcFaceONNX",
    }
    assert app.det_model.use_kps and app.det_model.fmc == 3 and app.det_model._num_anchors == 2


def test_faces_boxes_landmarks_and_embeddings_from_the_pack(
    tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    squares = [(10 * CELL, 3 * CELL, CELL), (2 * CELL, 5 * CELL, CELL)]
    rgb = frame(640, 480, squares, dots=[(6, 8), (20, 20)])
    kf = keyframe(rgb, 0.0)
    result, output = run(analyzer, item([kf]))

    assert result.face_count == 2 and result.frames_with_faces == 1
    assert result.frames[0].width == 640 and result.frames[0].height == 480
    assert result.model.detector == "scrfd" and result.model.detector_file == "det_tiny.onnx"
    assert result.model.recognizer_file == "w_tiny.onnx" and result.model.embedding_dim == 512
    assert result.model.det_score_kind == "probability" and result.model.providers == ["CPUExecutionProvider"]
    assert result.notes == []
    # Keys count faces from left to right, so the square at x=64 comes first.
    first, second = result.faces
    assert (first.key, second.key) == ("face-0-0", "face-0-1")
    assert first.box == (64.0, 160.0, 96.0, 192.0)
    assert second.box == (320.0, 96.0, 352.0, 128.0)
    template = ARCFACE_TEMPLATE_112 * CELL / 112.0
    assert first.landmarks is not None
    assert np.allclose(np.array(first.landmarks), template + np.array([64, 160]), atol=0.06)
    assert all(0.5 < face.det_score < 1.0 for face in result.faces)
    assert all(face.has_embedding and face.alignment == "landmarks" for face in result.faces)

    bgr = decode(kf.path.read_bytes())
    assert [e.key for e in output.embeddings] == ["face-0-0", "face-0-1"]
    for face, embedding in zip(result.faces, output.embeddings, strict=True):
        vector = np.array(embedding.vector, dtype=np.float32)
        assert embedding.collection == "face_embeddings" and vector.shape == (512,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
        assert face.landmarks is not None
        # The analyzer's vector is insightface's, recomputed here from the decoded landmarks.
        landmarks = ARCFACE_TEMPLATE_112 * CELL / 112.0 + np.array(face.box[:2], dtype=np.float32)
        assert float(vector @ expected_embedding(bgr, landmarks)) > 0.9999
        assert embedding.fields == {
            "timestamp_s": 0.0,
            "keyframe": 0,
            "box": list(face.box),
            "det_score": face.det_score,
        }
    a, b = (np.array(e.vector) for e in output.embeddings)
    assert float(a @ b) < 0.99  # different faces, different vectors

    assert [f.name for f in output.files] == ["face-0-0.jpg", "face-0-1.jpg"]
    crop = decode(output.files[0].data)
    assert crop.shape == (160, 160, 3) and output.files[0].content_type == "image/jpeg"
    # The face is centred: the crop's middle is the white square, its corners the black frame around it.
    assert crop[80, 80].min() > 200 and crop[5, 5].max() < 60


def test_video_keyframes_give_stable_keys_times_and_same_face_same_vector(
    tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    # 720p keyframes: the detector sees them at half size, boxes come back in keyframe pixels.
    first = keyframe(frame(1280, 720, [(640, 192, 2 * CELL)], dots=[(12, 16)]), 0.0)
    empty = keyframe(frame(1280, 720, []), 2.5)
    again = keyframe(frame(1280, 720, [(128, 448, 2 * CELL)], dots=[(12, 16)]), 7.04)
    item_ = item([first, empty, again])
    result, output = run(analyzer, item_)

    assert [(f.key, f.keyframe, f.timestamp_s) for f in result.faces] == [("face-0-0", 0, 0.0), ("face-2-0", 2, 7.04)]
    assert result.faces[0].box == (640.0, 192.0, 704.0, 256.0)
    assert result.faces[1].box == (128.0, 448.0, 192.0, 512.0)
    assert [(fr.keyframe, fr.faces, fr.timestamp_s) for fr in result.frames] == [(0, 1, 0.0), (1, 0, 2.5), (2, 1, 7.04)]
    assert result.frames_with_faces == 2
    a, b = (np.array(e.vector) for e in output.embeddings)
    assert float(a @ b) > 0.999  # the same face in two keyframes
    assert output.embeddings[1].fields["keyframe"] == 2 and output.embeddings[1].fields["timestamp_s"] == 7.04

    # Running again gives the same keys and vectors: the worker's rows are replaced, not duplicated.
    _, again_output = run(analyzer, item_)
    assert [e.key for e in again_output.embeddings] == [e.key for e in output.embeddings]
    assert np.allclose(again_output.embeddings[0].vector, output.embeddings[0].vector)


def test_threshold_and_minimum_size_drop_faces(tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory) -> None:
    kf = keyframe(frame(640, 480, [(3 * CELL, 3 * CELL, CELL)]), 0.0)
    assert run(FacesAnalyzer(FaceSettings(pack_dir=tiny_pack)), item([kf]))[0].face_count == 1
    assert run(FacesAnalyzer(FaceSettings(pack_dir=tiny_pack, det_threshold=0.95)), item([kf]))[0].face_count == 0
    assert run(FacesAnalyzer(FaceSettings(pack_dir=tiny_pack, min_face_px=40)), item([kf]))[0].face_count == 0


def test_haar_faces_get_embeddings_aligned_on_their_box(
    tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:

    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack, detector="haar"))
    result, output = run(analyzer, item([keyframe(picture("astronaut"), 0.0)]))
    assert result.model.detector == "opencv-haar" and result.model.recognizer_file == "w_tiny.onnx"
    assert [(f.has_embedding, f.alignment, f.landmarks) for f in result.faces] == [(True, "box", None)]
    assert len(output.embeddings) == 1 and len(output.embeddings[0].vector) == 512
    assert NO_RECOGNIZER_NOTE not in result.notes and any("template" in note for note in result.notes)


async def test_analyze_runs_in_a_worker_thread(tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    output = await analyzer.analyze(item([keyframe(frame(640, 480, [(0, 0, CELL)]), 0.0)]))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, FacesResult)
    assert [f.box for f in output.result.faces] == [(0.0, 0.0, 32.0, 32.0)]
