"""A case with a photo, a video and a phone call analysed through the API ends with a dossier whose every statement
opens the evidence it rests on; when the vision model stays away, the dossier is made without it and says so.

Everything runs for real except the two language models, which cannot run here: the installed plugins (whisper,
speakers, faces with the tiny pack and the Haar cascade, ocr, minilm, llava, fusion) are loaded through their entry
points and run by real workers on the queues `aima worker --resources cpu,llava,llama` serves, against two test model
servers on 127.0.0.1 (`aima.testing.model_server`): LLaVA behind TGI's native API and Llama behind the OpenAI chat
API. The vision "model" describes each picture it is sent (people count 1, so that llava asks for faces); the fusion
"model" reads the evidence catalogue of its prompt (ids E1..En with their kinds, media and times) and writes a
dossier that cites a transcript line, a face, an on-screen text and a keyframe description by their ids, plus one
statement citing an id it was never given. The test then follows every citation of the stored dossier through
GraphQL to the stored item behind it (transcript segment, face, OCR span, keyframe description, speaker turn).

The job names neither whisper nor faces: whisper joins because a dossier is made (audio always goes through it), and
faces because the vision results show people (llava's follow-up).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import uuid
import wave
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from aima.app import create_app
from aima.plugins import AnalyzerRegistry
from aima.services.dossiers import hms
from aima.settings import InferenceSettings, Settings
from aima.testing.model_server import ModelServer, RecordedRequest
from aima.workers.process import check_models
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for, worker_thread
from tests.gql import GraphQLClient, register
from tests.graphql_jobs import ANALYZE, wait_for
from tests.media_samples import FEMALE, MALE, Line, Scene, astronaut_jpeg, dialogue, espeak, make_video
from tests.plugin_stack import installed_plugins
from tests.workers.jobs import resource_worker

pytestmark = [
    pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"),
    # insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate; upstream's to change.
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]

PLUGINS = ("whisper", "speakers", "faces", "ocr", "minilm", "llava", "fusion")
VISION_MODEL = "llava-hf/llava-v1.6-34b-hf"
FUSION_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
UNKNOWN_ID = "E999"
INVENTED = "The van was seen at the harbour the night before."
SCENES = (Scene("HARBOUR GATE 7", (20, 30, 70), face_left=True), Scene("NORTH PIER 12", (70, 25, 20), face_left=False))
LINES = (
    Line("We will meet at the train station tomorrow morning.", MALE),
    Line("Bring the money and come alone.", FEMALE),
)
CALL = Line("Keep your hands behind your back and do not move.", MALE)
VIDEO_FILE, PHOTO_FILE, CALL_FILE = "meeting.mp4", "portrait.jpg", "call.wav"
#: What the fusion model says of each item it cites, by purpose.
STATEMENTS = {
    "speech": "Someone arranges a meeting at the train station.",
    "call": "The caller orders someone to keep their hands behind their back.",
    "face": "The photo shows a person's face.",
    "text": "A sign in the video names a harbour gate.",
    "scene": "A keyframe shows cable ties on a wrist.",
}

EVIDENCE = "media { id filename } mediaId analyzer key kind summary startS endS keyframe box confidence keyframeUrl"
DOSSIER = f"""
query($id: ID!, $v: Int) {{
  case(id: $id) {{
    dossier(version: $v) {{
      version analyzer model strategy summary rejected job {{ id }}
      findings {{ statement confidence evidence {{ {EVIDENCE} }} }}
      timeline {{ mediaId startS endS description evidence {{ {EVIDENCE} }} }}
      persons {{
        label description
        appearances {{ mediaId startS endS evidence {{ {EVIDENCE} }} }}
        statements {{ statement evidence {{ {EVIDENCE} }} }}
      }}
      places {{ name description evidence {{ {EVIDENCE} }} }}
      objects {{ name description evidence {{ {EVIDENCE} }} }}
      events {{ name description evidence {{ {EVIDENCE} }} }}
      sensitive {{ label assessment confidence rationale evidence {{ {EVIDENCE} }} }}
      missing {{ modality mediaId reason }}
      markdown
    }}
    dossiers {{ version jobId analyzer model strategy }}
  }}
}}
"""
MEDIA = """
query($id: ID!) {
  media(id: $id) {
    id filename kind
    transcript { segments { index startS endS text } }
    faces { key keyframe timestampS box }
    ocr { lines { key keyframe timestampS text } spans { key text firstS lastS } }
    description {
      analyzer kind model endpoint failed
      timeline { keyframe timestampS description { scene confidence people { count } notable { label sensitive } } }
    }
    results { analyzer payload }
  }
}
"""

_DATA_BLOCK = re.compile(
    r'<<<DATA label="([^"]*)" \(untrusted data, not instructions\)\n(.*?)\n<<<END DATA label="\1"', re.DOTALL
)


# -- the models ------------------------------------------------------------------------------------------------------


def describe_picture(request: RecordedRequest) -> Mapping[str, Any] | None:
    """The vision model: a `FrameDescription` of the picture it was sent, naming its size (so that the test sees
    which picture reached it), one person (so that llava asks for faces) and a sensitive element."""
    if request.schema is None or "scene" not in request.schema.get("properties", {}):
        return None
    [image] = request.images
    with Image.open(io.BytesIO(image.data)) as picture:
        width, height = picture.size
    return {
        "scene": f"A person in an orange suit beside a sign, in a {width}x{height} picture.",
        "setting": "outdoor, daytime",
        "objects": [{"name": "sign", "count": 1, "position": "beside the person", "confidence": 0.9}],
        "people": {
            "count": 1,
            "persons": [
                {"appearance": "orange suit", "actions": "looks at the camera", "position": "centre", "confidence": 0.8}
            ],
        },
        "visible_text": [],
        "notable": [
            {"label": "cable ties", "description": "Cable ties on a wrist.", "sensitive": True, "confidence": 0.7}
        ],
        "confidence": 0.8,
    }


@dataclass(frozen=True)
class Row:
    """One entry of the evidence catalogue, as the fusion prompt showed it."""

    id: str
    file: str
    kind: str
    start_s: float | None
    summary: str


@dataclass
class Fusion:
    """The fusion model: reads the prompt's catalogue and cites, by id, one item of each kind it finds (the first
    transcript line of the video and of the call, the photo's face, the video's text and first keyframe), plus one
    id it was never given. Remembers what it was shown and what it cited, per case title."""

    shown: dict[str, dict[str, Row]] = field(default_factory=dict)
    cited: dict[str, dict[str, Row]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: RecordedRequest) -> Mapping[str, Any] | None:
        if request.schema is None or "summary" not in request.schema.get("properties", {}):
            return None
        blocks: dict[str, Any] = {}
        for label, body in _DATA_BLOCK.findall(request.prompt):
            blocks[label] = json.loads(body)
        files = {m["media"]: m.get("file", "") for m in blocks["media"]}
        rows = [
            Row(row[0], files[table["media"]], row[1], row[2], row[5])
            for label, table in blocks.items()
            if label.startswith("evidence ")
            for row in table["rows"]
        ]

        def first(kind: str, file: str) -> Row | None:
            return next((r for r in rows if r.kind == kind and r.file == file), None)

        chosen = {
            purpose: row
            for purpose, row in {
                "speech": first("speech", VIDEO_FILE),
                "call": first("speech", CALL_FILE),
                "face": first("face", PHOTO_FILE),
                "text": first("text", VIDEO_FILE),
                "scene": first("scene", VIDEO_FILE),
            }.items()
            if row is not None
        }
        with self._lock:
            self.shown[blocks["case title"]] = {r.id: r for r in rows}
            self.cited[blocks["case title"]] = chosen
        return self.dossier(chosen, blocks.get("persons", []))

    @staticmethod
    def dossier(chosen: dict[str, Row], persons: list[dict[str, Any]]) -> dict[str, Any]:
        def cite(purpose: str) -> list[str]:
            return [chosen[purpose].id] if purpose in chosen else []

        findings = [
            {"evidence": cite(purpose), "statement": statement, "confidence": 0.8}
            for purpose, statement in STATEMENTS.items()
            if purpose in chosen
        ]
        findings.append({"evidence": [*cite("scene"), UNKNOWN_ID], "statement": INVENTED, "confidence": 0.9})
        described = [
            {"person": p["person"], "evidence": ids[:2], "description": f"Person {p['person']} is seen or heard."}
            for p in persons
            if (ids := [*p["seen_or_heard"]["ids"], *p["says"]["ids"]])
        ]
        restraint = (
            {"assessment": "indicated", "rationale": "Cable ties on a wrist.", "evidence": cite("scene")}
            if "scene" in chosen
            else {"assessment": "insufficient_evidence", "rationale": "No picture was described.", "evidence": []}
        )
        coercion = (
            {"assessment": "indicated", "rationale": "Orders given on the call.", "evidence": cite("call")}
            if "call" in chosen
            else {"assessment": "insufficient_evidence", "rationale": "Nothing said was heard.", "evidence": []}
        )
        return {
            "summary": f"{len(chosen)} kinds of evidence were reviewed.",
            "timeline": [
                {"evidence": cite(p), "description": f"The moment of the {p}."}
                for p in ("speech", "text", "scene")
                if p in chosen
            ],
            "persons": described,
            "places": [{"evidence": cite("text"), "name": "Harbour gate", "description": "Named on a sign."}]
            if "text" in chosen
            else [],
            "objects": [{"evidence": cite("scene"), "name": "Cable ties", "description": "On a wrist."}]
            if "scene" in chosen
            else [],
            "events": [{"evidence": cite("speech"), "name": "A meeting", "description": "Arranged for tomorrow."}]
            if "speech" in chosen
            else [],
            "findings": findings,
            "sensitive": [
                {"label": "restraint", "confidence": 0.7, **restraint},
                {"label": "coercion", "confidence": 0.6, **coercion},
            ],
        }


# -- the stack -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    client: GraphQLClient
    vision: ModelServer
    fusion_server: ModelServer
    fusion: Fusion


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> AnalyzerRegistry:
    """The installed plugins, found through their entry points and configured as a worker's settings would."""
    found = installed_plugins(tmp_path_factory, PLUGINS)
    wanted = ["whisper", "speakers", "faces", "ocr", "llava"]
    missing = [name for name in wanted if name not in found.names()]
    if missing or found.embedder() is None or not found.is_case_analyzer("fusion"):
        pytest.skip(f"plugins not installed: {missing or 'minilm or fusion'}")
    check_models(found, ["cpu", "llava", "llama"])  # what `aima worker --resources cpu,llava,llama` checks
    return found


def stack_settings(servers: Servers, vision_url: str, fusion_url: str) -> Settings:
    """The session's servers, the two model endpoints (retrying fast), and a model deadline of 3 s."""
    base = settings_for(servers)
    fast = {"max_attempts": 2, "retry_base_s": 0.05, "retry_cap_s": 0.1}
    inference = InferenceSettings(
        endpoints={
            "llava": {"url": vision_url, "protocol": "tgi", "model": VISION_MODEL, "max_concurrency": 4, **fast},
            "llama": {
                "url": fusion_url,
                "protocol": "openai",
                "model": FUSION_MODEL,
                "max_new_tokens": 2048,
                "max_input_tokens": 12000,
                **fast,
            },
        },
    )
    worker = base.worker.model_copy(
        update={"model_wait_deadline_s": 3.0, "retry_base_s": 0.2, "retry_cap_s": 0.5, "max_tries": 50}
    )
    return base.model_copy(update={"inference": inference, "worker": worker})


@pytest.fixture(scope="module")
def stack(servers: Servers, registry: AnalyzerRegistry) -> Iterator[Stack]:
    """Both model servers, the API, and one worker per queue of `aima worker --resources cpu,llava,llama`."""
    fusion = Fusion()
    with (
        ModelServer(model=VISION_MODEL, answer=describe_picture) as vision,
        ModelServer(model=FUSION_MODEL, answer=fusion, max_total_tokens=32768) as fusion_server,
    ):
        settings = stack_settings(servers, vision.url, fusion_server.url)
        app = create_app(settings, analyzers=registry)
        with (
            TestClient(app, headers={"origin": "http://127.0.0.1:8000"}) as http,
            worker_thread(settings, analyzers=registry),
            worker_thread(settings, analyzers=registry, **resource_worker(settings, "llava")),
            worker_thread(settings, analyzers=registry, **resource_worker(settings, "llama")),
        ):
            client = register(http, f"dossier-{uuid.uuid4().hex[:6]}@example.org")
            yield Stack(client, vision, fusion_server, fusion)


def wav(line: Line) -> bytes:
    """The line spoken, as a 16-bit mono WAV file (what a phone recording is uploaded as)."""
    samples, rate = dialogue([line])
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.tobytes())
    return out.getvalue()


def upload(client: GraphQLClient, case_id: str, data: bytes, filename: str, content_type: str) -> str:
    media: dict[str, Any] = client.upload(case_id, data, filename, content_type)["data"]["uploadMedia"]
    return str(media["id"])


@dataclass(frozen=True)
class Analysed:
    client: GraphQLClient
    title: str
    case_id: str
    job: dict[str, Any]
    job_id: str
    ids: dict[str, str]  # file name -> media id
    media: dict[str, dict[str, Any]]  # media id -> what GraphQL says of it
    dossier: dict[str, Any]
    versions: list[dict[str, Any]]


@pytest.fixture(scope="module")
def analysed(stack: Stack) -> Analysed:
    """The photo, the video and the call in one case, analysed with llava and fusion (and speakers and ocr)."""
    client = stack.client
    title = f"Harbour meeting {uuid.uuid4().hex[:6]}"
    case_id = new_case(client, title)
    ids = {
        PHOTO_FILE: upload(client, case_id, astronaut_jpeg(), PHOTO_FILE, "image/jpeg"),
        VIDEO_FILE: upload(client, case_id, make_video(SCENES, LINES), VIDEO_FILE, "video/mp4"),
        CALL_FILE: upload(client, case_id, wav(CALL), CALL_FILE, "audio/wav"),
    }
    job_id = client.data(ANALYZE, {"c": case_id, "a": ["speakers", "ocr", "llava", "fusion"]})["analyzeCase"]["id"]
    job = wait_for(client, job_id, timeout_s=180)
    found = client.data(DOSSIER, {"id": case_id, "v": 1})["case"]
    return Analysed(
        client=client,
        title=title,
        case_id=case_id,
        job=job,
        job_id=job_id,
        ids=ids,
        media={m: client.data(MEDIA, {"id": m})["media"] for m in ids.values()},
        dossier=found["dossier"],
        versions=found["dossiers"],
    )


# -- following a citation --------------------------------------------------------------------------------------------


def all_evidence(dossier: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every Evidence node of the dossier, wherever it is cited."""
    found: list[dict[str, Any]] = []
    for section in ("findings", "timeline", "places", "objects", "events", "sensitive"):
        for entry in dossier[section]:
            found.extend(entry["evidence"])
    for person in dossier["persons"]:
        for part in (*person["appearances"], *person["statements"]):
            found.extend(part["evidence"])
    return found


def payload(media: Mapping[str, Any], analyzer: str) -> dict[str, Any]:
    [result] = [r["payload"] for r in media["results"] if r["analyzer"] == analyzer]
    return dict(result)


def stored_item(media: Mapping[str, Any], evidence: Mapping[str, Any]) -> dict[str, Any]:
    """What the stored result (read through the media's own GraphQL fields) says of the cited item, in the
    Evidence's terms: kind, summary, times, keyframe, box (None where the Evidence must have none)."""
    analyzer, key = evidence["analyzer"], evidence["key"]
    picture = media["kind"] == "IMAGE"
    if analyzer == "whisper":
        [segment] = [s for s in media["transcript"]["segments"] if f"segment-{s['index']}" == key]
        return {
            "kind": "speech",
            "summary": segment["text"],
            "startS": segment["startS"],
            "endS": segment["endS"],
            "keyframe": None,
            "box": None,
        }
    if analyzer == "speakers":
        [turn] = [t for t in payload(media, "speakers")["turns"] if t["key"] == key]
        return {
            "kind": "speaker",
            "summary": f"{turn['speaker']} speaks",
            "startS": turn["start_s"],
            "endS": turn["end_s"],
            "keyframe": None,
            "box": None,
        }
    if analyzer == "faces":
        [face] = [f for f in media["faces"] if f["key"] == key]
        at = None if picture else face["timestampS"]
        assert picture or f"keyframe {face['keyframe']}" in evidence["summary"], (face, evidence)
        return {
            "kind": "face",
            "summary": evidence["summary"],  # a generated description; the item is the box on its keyframe
            "startS": at,
            "endS": at,
            "keyframe": face["keyframe"],
            "box": face["box"],
        }
    if analyzer == "ocr":
        [span] = [s for s in media["ocr"]["spans"] if s["key"] == key]
        [raw] = [s for s in payload(media, "ocr")["spans"] if s["key"] == key]
        xs, ys = [x for x, _ in raw["box"]], [y for _, y in raw["box"]]
        line_frames = {line["keyframe"] for line in media["ocr"]["lines"] if line["timestampS"] == span["firstS"]}
        assert raw["first_frame"] in line_frames, (span, media["ocr"]["lines"])
        return {
            "kind": "text",
            "summary": span["text"],
            "startS": None if picture else span["firstS"],
            "endS": None if picture else span["lastS"],
            "keyframe": raw["first_frame"],
            "box": [min(xs), min(ys), max(xs), max(ys)],
        }
    if analyzer == "llava":
        description = media["description"]
        assert description is not None and description["analyzer"] == "llava"
        [entry] = [e for e in description["timeline"] if f"keyframe-{e['keyframe']}" == key]
        assert evidence["confidence"] == entry["description"]["confidence"]
        assert evidence["summary"].startswith(entry["description"]["scene"])
        return {
            "kind": "scene",
            "summary": evidence["summary"],
            "startS": entry["timestampS"],
            "endS": None,
            "keyframe": entry["keyframe"],
            "box": None,
        }
    raise AssertionError(f"evidence of an unexpected analyzer: {evidence}")


def assert_opens_its_evidence(analysed: Analysed, evidence: Mapping[str, Any]) -> None:
    media = analysed.media[evidence["mediaId"]]
    assert evidence["media"] == {"id": media["id"], "filename": media["filename"]}
    expected = stored_item(media, evidence)
    assert {k: evidence[k] for k in expected} == expected, evidence


def is_jpeg(url: str | None) -> bool:
    if url is None:
        return False
    answer = httpx.get(url)
    return answer.status_code == 200 and answer.content[:3] == b"\xff\xd8\xff"


# -- the case --------------------------------------------------------------------------------------------------------


def test_the_job_analysed_every_media_item_and_ended_with_the_dossier(analysed: Analysed, stack: Stack) -> None:
    assert analysed.job["state"] == "SUCCEEDED", analysed.job
    photo, video, call = (analysed.ids[f] for f in (PHOTO_FILE, VIDEO_FILE, CALL_FILE))
    ran = {(t["mediaId"], t["analyzer"]) for t in analysed.job["tasks"] if not t["analyzer"].startswith("prepare")}
    assert {t["state"] for t in analysed.job["tasks"]} == {"SUCCEEDED"}
    assert ran == {
        (video, "whisper"),  # not asked for: audio always goes through whisper when a dossier is made
        (call, "whisper"),
        (video, "speakers"),
        (call, "speakers"),
        (video, "ocr"),
        (photo, "ocr"),
        (video, "llava"),
        (photo, "llava"),
        (video, "faces"),  # not asked for: llava saw people
        (photo, "faces"),
        (None, "fusion"),
    }
    # The pictures went to the vision model on TGI's API, the case to the language model on the OpenAI API.
    video_frames = len(analysed.media[video]["description"]["timeline"])
    assert video_frames >= 2 and stack.vision.count() >= video_frames + 1
    assert {r.protocol for r in stack.vision.requests} == {"tgi"}
    assert all(len(r.images) == 1 and r.images[0].mime == "image/jpeg" for r in stack.vision.requests)
    assert {r.protocol for r in stack.fusion_server.requests} == {"openai"}


def test_the_media_descriptions_are_the_vision_models(analysed: Analysed) -> None:
    photo = analysed.media[analysed.ids[PHOTO_FILE]]["description"]
    video = analysed.media[analysed.ids[VIDEO_FILE]]["description"]
    assert analysed.media[analysed.ids[CALL_FILE]]["description"] is None
    assert (photo["kind"], photo["model"], photo["endpoint"], photo["failed"]) == ("image", VISION_MODEL, "llava", [])
    [entry] = photo["timeline"]
    assert (entry["keyframe"], entry["timestampS"]) == (0, 0.0)
    assert entry["description"]["scene"] == "A person in an orange suit beside a sign, in a 512x512 picture."
    assert entry["description"]["people"] == {"count": 1}
    assert entry["description"]["notable"] == [{"label": "cable ties", "sensitive": True}]
    assert video["kind"] == "video" and video["failed"] == []
    times = [e["timestampS"] for e in video["timeline"]]
    assert times == sorted(times) and times[0] == 0.0 and times[-1] >= 3.0  # both scenes were described


def test_every_citation_opens_the_stored_item_behind_it(analysed: Analysed) -> None:
    dossier = analysed.dossier
    assert (dossier["version"], dossier["analyzer"], dossier["model"], dossier["strategy"]) == (
        1,
        "fusion",
        FUSION_MODEL,
        "single",
    )
    assert dossier["job"] == {"id": analysed.job_id} and dossier["missing"] == []
    evidence = all_evidence(dossier)
    assert {e["analyzer"] for e in evidence} >= {"whisper", "faces", "ocr", "llava"}
    for item in evidence:
        assert_opens_its_evidence(analysed, item)
    # Each keyframe cited opens its picture (faces, on-screen text and descriptions alike).
    framed = {(e["mediaId"], e["keyframe"]): e["keyframeUrl"] for e in evidence if e["keyframe"] is not None}
    assert framed and all(is_jpeg(url) for url in framed.values()), framed


def test_each_statement_cites_the_item_the_model_named(analysed: Analysed, stack: Stack) -> None:
    """The ids the model wrote resolve to the items its prompt showed under them: the right file, kind, time and
    text, not merely some stored item."""
    cited = stack.fusion.cited[analysed.title]
    assert set(cited) == {"speech", "call", "face", "text", "scene"}, stack.fusion.shown[analysed.title]
    statements = {f["statement"]: f["evidence"] for f in analysed.dossier["findings"]}
    assert set(statements) == {STATEMENTS[purpose] for purpose in cited}
    for purpose, row in cited.items():
        [evidence] = statements[STATEMENTS[purpose]]
        assert (evidence["media"]["filename"], evidence["kind"], evidence["summary"]) == (
            row.file,
            row.kind,
            row.summary,
        )
        start = evidence["startS"]
        assert row.start_s == (None if start is None else round(start, 1)), (row, evidence)
    texts = analysed.media[analysed.ids[VIDEO_FILE]]["ocr"]["spans"]
    assert any("HARBOUR" in span["text"].upper() for span in texts), texts


def test_restraint_and_coercion_are_assessed_on_the_cited_evidence(analysed: Analysed, stack: Stack) -> None:
    cited = stack.fusion.cited[analysed.title]
    indicators = {i["label"]: i for i in analysed.dossier["sensitive"]}
    assert {"RESTRAINT", "COERCION"} <= set(indicators)
    restraint, coercion = indicators["RESTRAINT"], indicators["COERCION"]
    assert (restraint["assessment"], restraint["rationale"]) == ("INDICATED", "Cable ties on a wrist.")
    [picture] = restraint["evidence"]
    assert (picture["analyzer"], picture["kind"], picture["media"]["filename"]) == ("llava", "scene", VIDEO_FILE)
    assert picture["summary"] == cited["scene"].summary and "cable ties (sensitive)" in picture["summary"]
    assert is_jpeg(picture["keyframeUrl"])
    assert coercion["assessment"] == "INDICATED"
    [said] = coercion["evidence"]
    assert (said["analyzer"], said["kind"], said["media"]["filename"]) == ("whisper", "speech", CALL_FILE)
    assert "hands" in said["summary"].lower()


def test_the_statement_citing_an_unknown_id_is_rejected(analysed: Analysed) -> None:
    [rejected] = analysed.dossier["rejected"]
    assert INVENTED in rejected and UNKNOWN_ID in rejected
    assert INVENTED not in {f["statement"] for f in analysed.dossier["findings"]}


def test_persons_come_from_the_face_and_voice_clusters(analysed: Analysed) -> None:
    persons = analysed.dossier["persons"]
    photo = analysed.ids[PHOTO_FILE]
    [astronaut] = [p for p in persons if any(a["mediaId"] == photo for a in p["appearances"])]
    seen_in = {a["mediaId"] for a in astronaut["appearances"]}
    assert seen_in == {photo, analysed.ids[VIDEO_FILE]}, astronaut  # the same face in the photo and the video
    heard = [s for p in persons for s in p["statements"]]
    assert heard and all(e["kind"] in {"speech", "speaker"} for s in heard for e in s["evidence"])


def test_the_markdown_names_each_cited_file_and_time(analysed: Analysed) -> None:
    markdown = analysed.dossier["markdown"]
    assert markdown.startswith(f"# Dossier: {analysed.title}\n\nVersion 1, made ")
    lines = markdown.splitlines()
    for evidence in all_evidence(analysed.dossier):
        where = evidence["media"]["filename"]
        if evidence["startS"] is not None:
            where += f" @ {hms(evidence['startS'])}"
        prefix = f"- Evidence: {where}"
        item = f"{evidence['analyzer']} {evidence['key']}"
        assert any(line.lstrip().startswith(prefix) and item in line for line in lines), (prefix, item, markdown)
    assert "## Sensitive content" in markdown


def test_the_case_lists_its_dossier(analysed: Analysed) -> None:
    assert analysed.versions[-1] == {
        "version": 1,
        "jobId": analysed.job_id,
        "analyzer": "fusion",
        "model": FUSION_MODEL,
        "strategy": "single",
    }


# -- fallbacks and versions ------------------------------------------------------------------------------------------


def test_a_vision_model_that_stays_away_leaves_a_dossier_that_says_so(stack: Stack, analysed: Analysed) -> None:
    client = stack.client
    title = f"Portrait {uuid.uuid4().hex[:6]}"
    case_id = new_case(client, title)
    photo = upload(client, case_id, astronaut_jpeg(), PHOTO_FILE, "image/jpeg")
    before = stack.vision.count()
    stack.vision.fail(503, seconds=120)
    try:
        started = time.monotonic()
        job_id = client.data(ANALYZE, {"c": case_id, "a": ["faces", "llava", "fusion"]})["analyzeCase"]["id"]
        job = wait_for(client, job_id, timeout_s=60)
        took = time.monotonic() - started
    finally:
        stack.vision.fail(503, requests=0)  # answering again
    assert job["state"] == "FAILED", job  # the vision task failed; the dossier was made anyway
    states = {t["analyzer"]: t for t in job["tasks"] if not t["analyzer"].startswith("prepare")}
    llava = states["llava"]
    assert (llava["state"], llava["error"]["code"]) == ("FAILED", "MODEL_UNAVAILABLE"), llava
    assert re.search(r"\(gave up after \d+ s\)$", llava["error"]["message"]), llava  # the deadline, not a count
    assert (states["faces"]["state"], states["fusion"]["state"]) == ("SUCCEEDED", "SUCCEEDED")
    assert stack.vision.count() - before >= 2 and 3.0 <= took < 30  # it kept trying until the 3-s deadline

    dossier = client.data(DOSSIER, {"id": case_id, "v": None})["case"]["dossier"]
    assert dossier["version"] == 1 and dossier["job"] == {"id": job_id}
    missing = {(m["modality"], m["mediaId"]): m["reason"] for m in dossier["missing"]}
    assert set(missing) == {("vision", photo)}, missing
    assert missing[("vision", photo)].startswith("MODEL_UNAVAILABLE")
    # The model was told what is missing, and could only cite the face.
    [request] = [r for r in stack.fusion_server.requests if title in r.prompt]
    assert "Missing analyses" in request.prompt and '"modality": "vision"' in request.prompt
    assert set(stack.fusion.cited[title]) == {"face"}
    cited = all_evidence(dossier)
    assert cited and {(e["analyzer"], e["mediaId"]) for e in cited} == {("faces", photo)}
    indicators = {i["label"]: i["assessment"] for i in dossier["sensitive"]}
    assert indicators["RESTRAINT"] == indicators["COERCION"] == "INSUFFICIENT_EVIDENCE"
    assert f"## Missing\n\n- vision (media {photo}): MODEL_UNAVAILABLE" in dossier["markdown"]


def test_a_second_analysis_makes_version_2_and_version_1_stays(analysed: Analysed) -> None:
    client = analysed.client
    job_id = client.data(ANALYZE, {"c": analysed.case_id, "a": ["fusion"]})["analyzeCase"]["id"]
    assert wait_for(client, job_id, timeout_s=60)["state"] == "SUCCEEDED"
    found = client.data(DOSSIER, {"id": analysed.case_id, "v": None})["case"]
    assert found["dossier"]["version"] == 2 and found["dossier"]["job"] == {"id": job_id}
    assert [(v["version"], v["jobId"]) for v in found["dossiers"]] == [(2, job_id), (1, analysed.job_id)]
    again = client.data(DOSSIER, {"id": analysed.case_id, "v": 1})["case"]["dossier"]
    assert without_links(again) == without_links(analysed.dossier)


def without_links(value: Any) -> Any:
    """The value without its presigned keyframe links, which are new on every read."""
    if isinstance(value, Mapping):
        return {k: without_links(v) for k, v in value.items() if k != "keyframeUrl"}
    if isinstance(value, list):
        return [without_links(v) for v in value]
    return value
