"""Evidence items of a stored faces result: one per face, under the key of its embedding and crop, so that a person
cluster's members, search hits and dossier citations name the same face."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faces_support import ItemFactory, KeyframeWriter, picture
from numpy.typing import NDArray

from aima.analysis import AnalysisInput, AnalysisOutput
from aima_faces.analyzer import FacesAnalyzer
from aima_faces.results import FacesResult
from aima_faces.settings import FaceSettings
from aima_faces.testing import TINY_CELL_PX

CELL = TINY_CELL_PX
# insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate; that is upstream's to change.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def squares(*cells: tuple[int, int]) -> NDArray[np.uint8]:
    """A black 640x480 frame with a white square in each grid cell (column, row): a face to the tiny pack."""
    rgb = np.zeros((480, 640, 3), dtype=np.uint8)
    for column, row in cells:
        rgb[row * CELL : (row + 1) * CELL, column * CELL : (column + 1) * CELL] = 255
    return rgb


def stored(analyzer: FacesAnalyzer, item: AnalysisInput) -> tuple[dict[str, Any], AnalysisOutput]:
    output = analyzer.analyze_blocking(item)
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, FacesResult)
    return output.result.model_dump(mode="json"), output


def test_every_face_of_a_video_is_citable_under_its_embedding_key(
    tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    keyframes = [keyframe(squares((10, 3), (2, 5)), 0.0), keyframe(squares(), 4.0), keyframe(squares((6, 6)), 72.5)]
    payload, output = stored(analyzer, item(keyframes))
    assert isinstance(output.result, FacesResult)
    faces = output.result.faces

    items = analyzer.evidence("m1", payload)
    assert [i.key for i in items] == [e.key for e in output.embeddings] == ["face-0-0", "face-0-1", "face-2-0"]
    assert [f"{i.key}.jpg" for i in items] == [f.name for f in output.files]
    assert [i.summary for i in items] == [
        "face 1 of 2 at 00:00 (keyframe 0)",
        "face 2 of 2 at 00:00 (keyframe 0)",
        "face at 01:12 (keyframe 2)",
    ]
    for i, embedding in zip(items, output.embeddings, strict=True):
        assert (i.start_s, i.end_s) == (embedding.fields["timestamp_s"],) * 2
        assert i.keyframe == embedding.fields["keyframe"] and list(i.box or ()) == embedding.fields["box"]
        assert i.confidence == embedding.fields["det_score"]
    assert list(items[0].box or ()) == [64.0, 160.0, 96.0, 192.0] and items[2].start_s == 72.5
    assert [i.confidence for i in items] == [f.det_score for f in faces]
    assert {(i.media_id, i.analyzer, i.kind) for i in items} == {("m1", "faces", "face")}


def test_a_pictures_faces_carry_no_time(tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    payload, output = stored(analyzer, item([keyframe(squares((4, 4)), 0.0)]))
    [face] = analyzer.evidence("m1", payload)
    assert (face.key, face.summary, face.start_s, face.end_s, face.keyframe) == (
        "face-0-0",
        "face in the picture",
        None,
        None,
        0,
    )
    assert [e.key for e in output.embeddings] == ["face-0-0"]


def test_haar_faces_are_citable_without_embeddings_and_without_a_confidence(
    keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings())
    astronaut = picture("astronaut")
    payload, output = stored(analyzer, item([keyframe(astronaut, 0.0), keyframe(astronaut, 3725.0)]))
    items = analyzer.evidence("m1", payload)
    assert list(output.embeddings) == []
    assert [f"{i.key}.jpg" for i in items] == [f.name for f in output.files] == ["face-0-0.jpg", "face-1-0.jpg"]
    assert [i.summary for i in items] == ["face at 00:00 (keyframe 0)", "face at 1:02:05 (keyframe 1)"]
    # The cascade's det_score is a stage weight, not a probability: no confidence rather than a misleading one.
    assert all(i.confidence is None for i in items)


def test_a_result_of_another_shape_offers_nothing_instead_of_failing(
    tiny_pack: Path, keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings(pack_dir=tiny_pack))
    payload, _ = stored(analyzer, item([keyframe(squares((4, 4)), 0.0), keyframe(squares(), 2.0)]))
    assert analyzer.evidence("m1", {}) == []
    assert analyzer.evidence("m1", {"detections": [{"bbox": [0, 0, 1, 1]}]}) == []
    assert analyzer.evidence("m1", {**payload, "faces": [{"bbox": [0, 0, 1, 1], "score": 0.9}]}) == []
    # Model information of another shape does not hide the faces; it only drops the confidence.
    older = {**payload, "model": {"name": "buffalo_l"}}
    assert [(i.key, i.confidence) for i in analyzer.evidence("m1", older)] == [("face-0-0", None)]
