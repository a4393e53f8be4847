"""A video and a photo uploaded through the API end with transcript, speakers, faces, persons and on-screen text.

Everything is real except the face recogniser: the installed plugins (whisper with the bundled tiny.en, speakers,
faces, ocr, the minilm embedder) are loaded through their entry points with a configuration, as a worker loads them,
and run by a real worker on the session's servers. Faces are found by the packaged Haar cascade and embedded by the
tiny ArcFace-shaped recogniser `aima_faces.testing.build_tiny_pack` builds (no real face pack can be downloaded here):
it is a fixed projection of the aligned crop, so the same face in the video and the photo gives near vectors.

The video (tests/media_samples.py) shows the astronaut's face beside a board reading HARBOUR GATE 7, then, from its
middle, beside one reading NORTH PIER 12, while a male and then a female espeak-ng voice speak a sentence each.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from aima.app import create_app
from aima.plugins import AnalyzerRegistry
from aima.workers.process import check_models
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for, worker_thread
from tests.gql import GraphQLClient, register
from tests.graphql_jobs import ANALYZE, wait_for
from tests.media_samples import FEMALE, MALE, Line, Scene, astronaut_jpeg, espeak, make_video
from tests.plugin_stack import installed_plugins

pytestmark = [
    pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"),
    # insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate; upstream's to change.
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]

PLUGINS = ("whisper", "speakers", "faces", "ocr", "minilm")
ANALYZERS = ["whisper", "speakers", "faces", "ocr"]
SCENES = (Scene("HARBOUR GATE 7", (20, 30, 70), face_left=True), Scene("NORTH PIER 12", (70, 25, 20), face_left=False))
LINES = (
    Line("We will meet at the train station tomorrow morning.", MALE),
    Line("Bring the money and come alone.", FEMALE),
)

MEDIA = """
query($id: ID!) {
  media(id: $id) {
    transcript { language diarized segments { startS endS text speaker voiceId words { word } } }
    faces { key keyframe timestampS box detScore cropUrl personId }
    ocr { lines { keyframe text confidence box } spans { text firstS lastS frames } }
  }
}
"""
PERSONS = """
query($id: ID!) {
  case(id: $id) {
    persons { id name memberCount mediaCount members { key keyframe media { id } } }
    voices { id memberCount members { speaker media { id } } }
  }
}
"""
SEARCH = """
query($c: ID!, $t: String!) {
  searchCase(caseId: $c, text: $t, first: 5) { analyzer key text startS media { id } score }
}
"""


@dataclass(frozen=True)
class Analysed:
    client: GraphQLClient
    case_id: str
    video_id: str
    image_id: str
    video: dict[str, Any]
    image: dict[str, Any]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> AnalyzerRegistry:
    """The installed plugins, found through their entry points and configured as a worker's settings would."""
    found = installed_plugins(tmp_path_factory, PLUGINS)
    missing = [name for name in ANALYZERS if name not in found.names()]
    if missing or found.embedder() is None:
        pytest.skip(f"plugins not installed: {missing or 'minilm'}")
    check_models(found, ["cpu"])  # what a worker checks at startup
    return found


@pytest.fixture(scope="module")
def analysed(servers: Servers, registry: AnalyzerRegistry) -> Iterator[Analysed]:
    """Upload the video and the photo to one case, analyse the case with a real worker, and read both media."""
    settings = settings_for(servers)
    video_bytes = make_video(SCENES, LINES)
    with (
        TestClient(create_app(settings, analyzers=registry), headers={"origin": "http://127.0.0.1:8000"}) as http,
        worker_thread(settings, analyzers=registry),
    ):
        client = register(http, f"analysers-{uuid.uuid4().hex[:6]}@example.org")
        case_id = new_case(client, "Harbour meeting")
        video = client.upload(case_id, video_bytes, "meeting.mp4", "video/mp4")["data"]["uploadMedia"]
        image = client.upload(case_id, astronaut_jpeg(), "portrait.jpg", "image/jpeg")["data"]["uploadMedia"]
        assert (video["kind"], image["kind"]) == ("VIDEO", "IMAGE")
        job_id = client.data(ANALYZE, {"c": case_id, "a": ANALYZERS})["analyzeCase"]["id"]
        job = wait_for(client, job_id, timeout_s=150)
        assert job["state"] == "SUCCEEDED", job
        done = {(t["mediaId"], t["analyzer"]) for t in job["tasks"] if t["state"] == "SUCCEEDED"}
        assert {(video["id"], name) for name in ANALYZERS} <= done
        assert {(image["id"], "faces"), (image["id"], "ocr")} <= done
        assert not done & {(image["id"], "whisper"), (image["id"], "speakers")}  # they take sound only
        yield Analysed(
            client=client,
            case_id=case_id,
            video_id=video["id"],
            image_id=image["id"],
            video=client.data(MEDIA, {"id": video["id"]})["media"],
            image=client.data(MEDIA, {"id": image["id"]})["media"],
        )


def squeeze(text: str) -> str:
    """Letters and digits only, in lower case: the OCR model often drops spaces between words."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def test_transcript_has_the_spoken_sentences_with_two_speakers(analysed: Analysed) -> None:
    transcript = analysed.video["transcript"]
    assert transcript is not None and transcript["language"] == "en" and transcript["diarized"]
    segments = transcript["segments"]
    said = " ".join(segment["text"] for segment in segments).lower()
    for word in ("meet", "station", "tomorrow", "money", "alone"):
        assert word in said, said
    first = next(s for s in segments if "station" in s["text"].lower())
    second = next(s for s in segments if "money" in s["text"].lower())
    assert first["startS"] < second["startS"] and first["words"]
    # The male voice speaks first (S1), the female voice second: two speakers, each with a voice across the case.
    assert (first["speaker"], second["speaker"]) == ("S1", "S2"), segments
    assert first["voiceId"] and second["voiceId"] and first["voiceId"] != second["voiceId"]


def test_faces_have_boxes_and_crops_in_every_scene(analysed: Analysed) -> None:
    faces = analysed.video["faces"]
    # The astronaut on the first keyframe (left) and on the scene change's (right), found by the Haar cascade.
    by_keyframe = {face["keyframe"]: face for face in faces}
    assert len(by_keyframe) >= 2, faces
    left, right = by_keyframe[0], by_keyframe[max(by_keyframe)]
    assert left["box"][2] < 480 < right["box"][0], faces  # the 960-px frame's halves
    assert right["timestampS"] >= 3.0
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 960 and 0 <= y1 < y2 <= 540 and face["detScore"] is not None
    [portrait] = analysed.image["faces"]
    x1, y1, x2, y2 = portrait["box"]
    assert 160 < x1 < 200 and 50 < y1 < 90 and 250 < x2 < 290 and 145 < y2 < 185  # Eileen Collins' face
    for face in (left, right, portrait):
        crop = httpx.get(face["cropUrl"])
        assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8", face


def test_the_same_face_in_the_video_and_the_photo_is_one_person(analysed: Analysed) -> None:
    persons = analysed.client.data(PERSONS, {"id": analysed.case_id})["case"]["persons"]
    faces = [*analysed.video["faces"], *analysed.image["faces"]]
    assert all(face["personId"] for face in faces)
    [person] = [p for p in persons if p["id"] == analysed.image["faces"][0]["personId"]]
    assert person["mediaCount"] == 2
    members = {(m["media"]["id"], m["key"]) for m in person["members"]}
    astronaut = {(analysed.video_id, "face-0-0"), (analysed.image_id, "face-0-0")}
    assert astronaut <= members, persons
    assert {face["personId"] for face in faces} == {person["id"]}, faces


def test_ocr_reads_both_boards(analysed: Analysed) -> None:
    ocr = analysed.video["ocr"]
    assert ocr is not None
    spans = {squeeze(span["text"]): span for span in ocr["spans"]}
    assert "harbourgate7" in spans and "northpier12" in spans, ocr["spans"]
    harbour, pier = spans["harbourgate7"], spans["northpier12"]
    assert harbour["firstS"] == 0.0 and pier["firstS"] >= 3.0 and harbour["lastS"] < pier["firstS"]
    line = next(line for line in ocr["lines"] if squeeze(line["text"]) == "harbourgate7")
    xs = [point[0] for point in line["box"]]
    assert min(xs) > 480 and line["confidence"] > 0.8  # the board is on the right of the first scene


def test_search_finds_what_was_written_and_what_was_said(analysed: Analysed) -> None:
    client, case_id = analysed.client, analysed.case_id
    written = client.data(SEARCH, {"c": case_id, "t": "harbour gate"})["searchCase"]
    assert written[0]["analyzer"] == "ocr" and squeeze(written[0]["text"]) == "harbourgate7", written
    assert written[0]["media"]["id"] == analysed.video_id and written[0]["startS"] == 0.0
    said = client.data(SEARCH, {"c": case_id, "t": "meeting at the railway station"})["searchCase"]
    assert said[0]["analyzer"] == "whisper" and "station" in said[0]["text"].lower(), said
