"""The whole path with a real worker: an analyzer returns face embeddings, crops and texts; the worker stores them and
hands the faces to clustering; the API shows the persons across the case, their crops, and finds the texts by meaning.

The analyzer embeds each keyframe by a fixed random projection of its 16x16 grey levels: crude, but a real function
of the picture, so that two uploads of one picture are one "person" and a different picture another."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel
from starlette.testclient import TestClient

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    BlockingAnalyzer,
    Embedding,
    MediaKind,
    Need,
    OutputFile,
    RegisterAnalyzer,
    RegisterEmbedder,
    SearchableText,
)
from aima.app import create_app
from aima.hookspecs import hookimpl
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.test_flow import new_case
from tests.api.test_identities_api import HashingEmbedder
from tests.conftest import Servers, settings_for, worker_thread
from tests.gql import GraphQLClient, register

PROJECTION = np.random.default_rng(0).normal(size=(256, 512))


class PixelFaces(BlockingAnalyzer):
    """One "face" per keyframe: the whole frame, embedded by its grey levels."""

    name = "pixel-faces"
    version = "1.0"
    media_kinds = frozenset({MediaKind.IMAGE})
    needs = frozenset({Need.KEYFRAMES})

    class Result(BaseModel):
        faces: list[dict[str, object]]

    result_model = Result

    def analyze_blocking(self, item: AnalysisInput) -> AnalysisOutput:
        faces, embeddings, files = [], [], []
        for index, keyframe in enumerate(item.keyframes):
            with Image.open(keyframe.path) as picture:
                grey = np.asarray(picture.convert("L").resize((16, 16)), dtype=np.float64).ravel()
                crop = io.BytesIO()
                picture.convert("RGB").resize((16, 16)).save(crop, "JPEG")
            vector = (grey - grey.mean()) @ PROJECTION
            key = f"face-{index}-0"
            box = [0.0, 0.0, float(keyframe.width), float(keyframe.height)]
            fields = {"timestamp_s": keyframe.timestamp_s, "keyframe": index, "box": box, "det_score": 0.9}
            embeddings.append(Embedding("face_embeddings", key, list(vector / np.linalg.norm(vector)), fields))
            files.append(OutputFile(f"{key}.jpg", crop.getvalue(), "image/jpeg"))
            faces.append(
                {
                    "key": key,
                    "keyframe": index,
                    "timestamp_s": keyframe.timestamp_s,
                    "box": box,
                    "det_score": 0.9,
                    "crop": f"{key}.jpg",
                    "has_embedding": True,
                }
            )
        caption = SearchableText("caption", "a face seen near the harbour at night", 0.0, 0.0)
        return AnalysisOutput(self.Result(faces=faces), embeddings=embeddings, files=files, texts=[caption])


class Plugin:
    @hookimpl
    def register_analyzers(self, register: RegisterAnalyzer) -> None:
        register(PixelFaces())

    @hookimpl
    def register_embedders(self, register: RegisterEmbedder) -> None:
        register(HashingEmbedder())


@pytest.fixture(scope="module")
def api(servers: Servers) -> Iterator[GraphQLClient]:
    """An API and a worker of their own (own queue), both with the test plugin."""
    settings: Settings = settings_for(servers)
    pm = create_plugin_manager(load_external=False)
    pm.register(Plugin(), "pixel-faces")
    registry = AnalyzerRegistry(pm)
    app = create_app(settings, analyzers=registry)
    with (
        TestClient(app, headers={"origin": "http://127.0.0.1:8000"}) as http,
        worker_thread(settings, analyzers=registry),
    ):
        yield register(http, f"flow-{uuid.uuid4().hex[:6]}@example.org")


def checkerboard() -> bytes:
    squares = np.kron(np.indices((8, 8)).sum(axis=0) % 2, np.ones((8, 8))) * 255
    out = io.BytesIO()
    Image.fromarray(squares.astype(np.uint8)).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def analysed(client: GraphQLClient, media_id: str) -> None:
    job = client.data(
        'mutation($m: ID!) { analyzeMedia(mediaId: $m, analyzers: ["pixel-faces"]) { id } }', {"m": media_id}
    )["analyzeMedia"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = client.data(
            "query($id: ID!) { job(id: $id) { state tasks { analyzer error { message } } } }", {"id": job}
        )["job"]
        if state["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
            assert state["state"] == "SUCCEEDED", state
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish")


def test_analysed_faces_become_persons_across_the_case(api: GraphQLClient) -> None:
    case_id = new_case(api, "Harbour")
    uploads = [make_jpeg(width=64), make_jpeg(width=72), checkerboard()]
    media = [
        api.upload(case_id, data, filename=f"p{n}.jpg")["data"]["uploadMedia"]["id"] for n, data in enumerate(uploads)
    ]
    for media_id in media:
        analysed(api, media_id)
    persons = api.data(
        "query($id: ID!) { case(id: $id) { persons { name memberCount members { media { id } cropUrl } } } }",
        {"id": case_id},
    )["case"]["persons"]
    assert [p["memberCount"] for p in persons] == [2, 1]
    assert {m["media"]["id"] for m in persons[0]["members"]} == set(media[:2])
    assert persons[1]["members"][0]["media"]["id"] == media[2]
    crop = httpx.get(persons[0]["members"][0]["cropUrl"])
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"

    query = 'query($id: ID!) { media(id: $id) { faces(analyzer: "pixel-faces") { key personName cropUrl } } }'
    faces = api.data(query, {"id": media[0]})
    assert faces["media"]["faces"][0]["personName"] == persons[0]["name"]
    hits = api.data(
        'query($c: ID!) { searchCase(caseId: $c, text: "harbour at night", first: 3) { key media { id } score } }',
        {"c": case_id},
    )["searchCase"]
    assert {h["media"]["id"] for h in hits} == set(media) and all(h["key"] == "caption" for h in hits)
