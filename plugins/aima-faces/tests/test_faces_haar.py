"""Out of the box (no pack): OpenCV's packaged Haar cascade finds faces, crops are stored, no embeddings are made."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
from faces_support import ItemFactory, KeyframeWriter, decode, picture

from aima.analysis import AnalysisOutput
from aima_faces.analyzer import HAAR_NOTE, NO_RECOGNIZER_NOTE, FacesAnalyzer
from aima_faces.results import FacesResult
from aima_faces.settings import FaceSettings


def test_packaged_detector_finds_the_astronauts_face_and_none_in_coffee(
    keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    analyzer = FacesAnalyzer(FaceSettings())
    analyzer.check()  # nothing to install
    output = analyzer.analyze_blocking(item([keyframe(picture("astronaut"), 0.0), keyframe(picture("coffee"), 4.0)]))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, FacesResult)
    result = output.result

    assert [(f.key, f.keyframe) for f in result.faces] == [("face-0-0", 0)]
    face = result.faces[0]
    # Eileen Collins' face: eyes near (210, 100) and (240, 100), chin near y 160 in the 512x512 picture.
    x1, y1, x2, y2 = face.box
    assert 160 < x1 < 200 and 50 < y1 < 90 and 250 < x2 < 290 and 145 < y2 < 185
    assert face.landmarks is None and face.det_score > 0 and not face.has_embedding and face.alignment is None
    assert [(fr.faces, fr.width, fr.height) for fr in result.frames] == [(1, 512, 512), (0, 600, 400)]
    assert result.model.detector == "opencv-haar" and result.model.det_score_kind == "haar-stage-weight"
    assert result.model.recognizer_file is None and result.model.embedding_dim is None
    assert result.notes == [NO_RECOGNIZER_NOTE, HAAR_NOTE]

    assert output.embeddings == []
    assert [(f.name, f.content_type) for f in output.files] == [("face-0-0.jpg", "image/jpeg")]
    crop = decode(output.files[0].data)
    assert crop.shape == (160, 160, 3)


def test_large_frames_are_scaled_for_the_cascade_and_boxes_come_back_in_frame_pixels(
    keyframe: KeyframeWriter, item: ItemFactory
) -> None:
    # The astronaut at 2.5x (1280x1280): the cascade sees it at 640, the box is in the large frame's pixels.
    big = np.asarray(cv2.resize(picture("astronaut"), (1280, 1280), interpolation=cv2.INTER_CUBIC), dtype=np.uint8)
    output = FacesAnalyzer(FaceSettings(crop_size=96)).analyze_blocking(item([keyframe(big, 0.0)]))
    assert isinstance(output, AnalysisOutput) and isinstance(output.result, FacesResult)
    (face,) = output.result.faces
    x1, y1, x2, y2 = face.box
    assert 400 < x1 < 500 and 125 < y1 < 225 and 625 < x2 < 725 and 360 < y2 < 460
    crop = decode(output.files[0].data)
    assert crop.shape == (96, 96, 3)


async def test_concurrent_tasks_share_one_detector(keyframe: KeyframeWriter, item: ItemFactory) -> None:
    analyzer = FacesAnalyzer(FaceSettings())
    kf = keyframe(picture("astronaut"), 0.0)
    outputs = await asyncio.gather(*(analyzer.analyze(item([kf])) for _ in range(3)))
    results = [output.result for output in outputs if isinstance(output, AnalysisOutput)]
    boxes = [[f.box for f in result.faces] for result in results if isinstance(result, FacesResult)]
    assert len(boxes) == 3 and boxes[0] == boxes[1] == boxes[2] and len(boxes[0]) == 1
