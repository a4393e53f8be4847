"""Images and videos described against the test model server on both protocols: what reaches the server, the timeline,
concurrency, follow-ups, searchable texts and evidence."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest
from llava_support import MODEL, description, frame_index, jpeg, keyframes, make_endpoints, media

from aima.analysis import MediaKind
from aima.inference import DATA_RULES
from aima.testing.model_server import ModelServer, RecordedRequest
from aima.vision import FrameDescription, VisualDescription
from aima_llava.analyzer import LlavaAnalyzer
from aima_llava.prompts import SYSTEM_PROMPT
from aima_llava.settings import LlavaSettings


async def test_an_image_is_described_and_reaches_the_server_as_an_inline_jpeg(
    server: ModelServer, protocol: str, tmp_path: Path
) -> None:
    server.answer = lambda record: description("Two cars parked on a street at night.")
    progress: list[tuple[float, str]] = []
    [frame] = keyframes(tmp_path, [0.0])
    async with make_endpoints(server.url, protocol) as endpoints:
        output = await LlavaAnalyzer().analyze(media(MediaKind.IMAGE, [frame], endpoints, progress))
    result = output.result
    assert isinstance(result, VisualDescription)
    assert result.kind == "image" and result.model == MODEL and result.endpoint == endpoints.vision.name
    [entry] = result.timeline
    assert entry.keyframe == 0 and entry.timestamp_s == 0.0
    assert entry.description == FrameDescription.model_validate(description("Two cars parked on a street at night."))
    assert result.failed == []
    assert progress == [(1.0, "described keyframe 1 of 1")]
    assert output.follow_ups == []  # nobody in the picture, and the model was sure
    [text] = output.texts
    assert text.key == "keyframe-0" and text.start_s is None
    assert text.text.startswith("Two cars parked on a street at night. outdoor, city street, night.")
    assert text.fields == {"keyframe": 0, "confidence": 0.9, "people": 0, "sensitive": []}

    [sent] = server.requests
    assert [(image.mime, image.data) for image in sent.images] == [("image/jpeg", jpeg(0))]
    assert sent.schema == FrameDescription.model_json_schema()
    assert SYSTEM_PROMPT in sent.prompt and DATA_RULES in sent.prompt and "NEVER name a person" in sent.prompt
    assert sent.question.endswith("Describe this picture as the JSON object.")
    uri = f"data:image/jpeg;base64,{base64.b64encode(jpeg(0)).decode()}"
    if protocol == "tgi":
        assert sent.path == "/generate_stream"
        assert f"<|im_start|>user\n![]({uri})\nDescribe this picture" in sent.body["inputs"]
        assert sent.body["parameters"]["do_sample"] is False
    else:
        assert sent.path == "/v1/chat/completions" and sent.body["temperature"] == 0
        [_, user] = sent.body["messages"]
        assert user["content"][0] == {"type": "image_url", "image_url": {"url": uri}}


async def test_a_video_becomes_a_timeline_of_its_keyframes_in_time_order(
    server: ModelServer, protocol: str, tmp_path: Path
) -> None:
    timestamps = [0.0, 2.5, 61.0, 7.5, 10.0]  # one out of order: the timeline is in time order whatever comes
    server.answer = lambda record: description(f"Picture {frame_index(record)}.", confidence=0.8)
    progress: list[tuple[float, str]] = []
    frames = keyframes(tmp_path, timestamps)
    async with make_endpoints(server.url, protocol, max_concurrency=2) as endpoints:
        output = await LlavaAnalyzer().analyze(media(MediaKind.VIDEO, frames, endpoints, progress))
    result = output.result
    assert isinstance(result, VisualDescription) and result.kind == "video"
    assert [(e.keyframe, e.timestamp_s, e.description.scene) for e in result.timeline] == [
        (0, 0.0, "Picture 0."),
        (1, 2.5, "Picture 1."),
        (3, 7.5, "Picture 3."),
        (4, 10.0, "Picture 4."),
        (2, 61.0, "Picture 2."),
    ]
    assert [fraction for fraction, _ in progress] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert sorted(frame_index(r) for r in server.requests) == [0, 1, 2, 3, 4]
    where = {frame_index(r): r.question for r in server.requests}
    assert "keyframe 3 of 5 of a video, at 01:01.0" in where[2]
    assert {(t.key, t.start_s) for t in output.texts} == {(f"keyframe-{i}", s) for i, s in enumerate(timestamps)}


async def test_keyframes_go_concurrently_up_to_the_endpoints_capacity(
    server: ModelServer, protocol: str, tmp_path: Path
) -> None:
    server.slow(0.2)
    frames = keyframes(tmp_path, [float(i) for i in range(9)])
    async with make_endpoints(server.url, protocol, max_concurrency=3) as endpoints:
        started = time.monotonic()
        output = await LlavaAnalyzer().analyze(media(MediaKind.VIDEO, frames, endpoints))
        elapsed = time.monotonic() - started
    assert isinstance(output.result, VisualDescription) and len(output.result.timeline) == 9
    assert server.max_in_flight == 3  # as many as the endpoint allows, never more
    assert 0.6 <= elapsed < 1.5  # three rounds of 0.2 s; one at a time would take 1.8 s


async def test_two_analyses_share_the_endpoints_slots(server: ModelServer, tmp_path: Path) -> None:
    server.slow(0.1)
    first = keyframes(tmp_path, [float(i) for i in range(4)])
    async with make_endpoints(server.url, "tgi", max_concurrency=2) as endpoints:
        analyzer = LlavaAnalyzer()
        await asyncio.gather(
            analyzer.analyze(media(MediaKind.VIDEO, first, endpoints)),
            analyzer.analyze(media(MediaKind.VIDEO, first, endpoints)),
        )
    assert server.max_in_flight == 2 and server.count() == 8


@pytest.mark.parametrize(
    ("people", "confidence", "follow_up", "expected"),
    [
        (2, 0.9, "faces", ["faces"]),  # people seen: their faces are worth detecting
        (0, 0.2, "faces", ["faces"]),  # unsure: faces may have been missed
        (0, 0.9, "faces", []),
        (3, 0.9, None, []),  # follow-ups turned off
        (1, 0.9, "faces-hq", ["faces-hq"]),
    ],
)
async def test_follow_ups_ask_for_faces_when_people_are_seen_or_the_model_is_unsure(
    server: ModelServer, tmp_path: Path, people: int, confidence: float, follow_up: str | None, expected: list[str]
) -> None:
    def answer(record: RecordedRequest) -> dict[str, object]:
        index = frame_index(record)  # people in the last keyframe only; the mean confidence decides the rest
        return description(people=people if index == 2 else 0, confidence=confidence)

    server.answer = answer
    analyzer = LlavaAnalyzer(LlavaSettings(follow_up=follow_up, low_confidence=0.4))
    async with make_endpoints(server.url, "tgi") as endpoints:
        output = await analyzer.analyze(media(MediaKind.VIDEO, keyframes(tmp_path, [0.0, 1.0, 2.0]), endpoints))
    assert list(output.follow_ups) == expected


async def test_evidence_cites_each_keyframe_with_its_scene_and_notable_elements(
    server: ModelServer, tmp_path: Path
) -> None:
    handcuffs = {"label": "handcuffs", "description": "on the wrists of a seated person", "sensitive": True}

    def answer(record: RecordedRequest) -> dict[str, object]:
        index = frame_index(record)
        if index == 1:
            notable = [{**handcuffs, "confidence": 0.7}, {"label": "clock", "description": "3 pm", "confidence": 0.9}]
            return description("A person sits on a chair.", people=1, confidence=0.75, notable=notable)
        return description("An empty room.", confidence=0.95)

    server.answer = answer
    analyzer = LlavaAnalyzer()
    async with make_endpoints(server.url, "openai") as endpoints:
        output = await analyzer.analyze(media(MediaKind.VIDEO, keyframes(tmp_path, [0.0, 4.0]), endpoints))
    items = analyzer.evidence("m-1", output.result.model_dump(mode="json"))
    assert [(i.key, i.kind, i.start_s, i.keyframe, i.confidence) for i in items] == [
        ("keyframe-0", "scene", 0.0, 0, 0.95),
        ("keyframe-1", "scene", 4.0, 1, 0.75),
    ]
    assert items[0].summary == "An empty room."
    assert items[1].summary == "A person sits on a chair. Notable: handcuffs (sensitive), clock."
    assert {i.media_id for i in items} == {"m-1"} and {i.analyzer for i in items} == {"llava"}
    [_, texts] = sorted(output.texts, key=lambda t: t.key)
    assert "handcuffs: on the wrists of a seated person." in texts.text
    assert texts.fields["sensitive"] == ["handcuffs"] and texts.fields["people"] == 1
    assert analyzer.evidence("m-1", {"kind": "video", "timeline": "not a list"}) == []


async def test_the_configured_endpoint_serves_and_names_the_queue(server: ModelServer, tmp_path: Path) -> None:
    analyzer = LlavaAnalyzer(LlavaSettings(endpoint="vllm-vision"))
    assert analyzer.runs_on == "vllm-vision" and LlavaAnalyzer().runs_on == "llava"
    assert LlavaAnalyzer.runs_on == "llava"  # the class keeps the default: other instances are unaffected
    async with make_endpoints(server.url, "openai", name="vllm-vision") as endpoints:
        output = await analyzer.analyze(media(MediaKind.IMAGE, keyframes(tmp_path, [0.0]), endpoints))
    assert isinstance(output.result, VisualDescription) and output.result.endpoint == "vllm-vision"
