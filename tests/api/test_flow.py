"""Upload, analyse, subscribe, read: the foundation's path through the API against real servers."""

from __future__ import annotations

import hashlib
import uuid

from arq.worker import Worker
from starlette.testclient import TestClient

from aima.resources import Resources
from aima.testing.media import make_jpeg, make_mp4
from tests.api.conftest import People
from tests.gql import GraphQLClient, register, run_sync

JOB_EVENTS = """
subscription($jobId: ID!) {
  jobEvents(jobId: $jobId) { jobId jobState taskId analyzer taskState progress message errorCode
                             tasks { analyzer state } }
}
"""
MEDIA = """
query($id: ID!) {
  media(id: $id) { id kind sha256 results { analyzer analyzerVersion payload createdAt updatedAt } }
}
"""
ANALYZE = """
mutation($m: ID!, $a: [String!]) { analyzeMedia(mediaId: $m, analyzers: $a) { id state tasks { id analyzer state } } }
"""


def new_case(client: GraphQLClient, title: str = "Harbour fire") -> str:
    case_id: str = client.data("mutation($t: String!) { createCase(title: $t) { id title } }", {"t": title})[
        "createCase"
    ]["id"]
    return case_id


def test_register_login_and_me(http: TestClient) -> None:
    email = f"new-{uuid.uuid4().hex[:6]}@Example.org"
    client = register(http, email)
    me = client.data("{ me { email role } }")["me"]
    assert me == {"email": email.lower(), "role": "USER"}
    again = GraphQLClient(http).execute(
        'mutation($e: String!) { register(email: $e, password: "a long enough password") { pendingApproval } }',
        {"e": email},
    )
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT"


def test_login_does_not_tell_which_emails_exist(http: TestClient, people: People) -> None:
    query = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
    unknown = GraphQLClient(http).execute(query, {"e": "nobody@example.org", "p": "whatever password"})
    wrong = GraphQLClient(http).execute(query, {"e": "admin@example.org", "p": "whatever password"})
    assert unknown["errors"][0]["message"] == wrong["errors"][0]["message"] == "Invalid email or password."
    assert unknown["errors"][0]["extensions"]["code"] == "INVALID_CREDENTIALS"


def test_weak_passwords_and_bad_emails_are_refused(http: TestClient) -> None:
    query = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { pendingApproval } }"
    short = GraphQLClient(http).execute(query, {"e": "short@example.org", "p": "short"})
    assert short["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    bad_email = GraphQLClient(http).execute(query, {"e": "not-an-email", "p": "a long enough password"})
    assert bad_email["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_upload_analyze_subscribe_and_read(
    http: TestClient, people: People, worker: Worker, resources: Resources
) -> None:
    owner = people.owner
    case_id = new_case(owner)
    image = make_jpeg(width=96, height=64, exif=True)
    uploaded = owner.upload(case_id, image, filename="../../etc/passwd.jpg", content_type="text/plain")
    assert not uploaded.get("errors"), uploaded
    media = uploaded["data"]["uploadMedia"]
    assert media["kind"] == "IMAGE"
    assert media["contentType"] == "image/jpeg"
    assert media["sha256"] == hashlib.sha256(image).hexdigest()
    assert media["sizeBytes"] == len(image)
    assert media["filename"] == "passwd.jpg"
    assert media["probe"]["width"] == 96

    key = f"cases/{case_id}/media/{media['id']}/original"
    assert run_sync(_read_object(resources.settings, key)) == image

    job = owner.data(ANALYZE, {"m": media["id"], "a": ["media-probe"]})["analyzeMedia"]
    assert job["state"] in {"QUEUED", "RUNNING", "SUCCEEDED"}
    events = list(owner.subscribe(JOB_EVENTS, {"jobId": job["id"]}))
    assert all("errors" not in e for e in events), events
    first = events[0]["data"]["jobEvents"]
    # The analyzer's task, and the image's thumbnail made on the way (a preparation task nothing waits for).
    assert sorted(t["analyzer"] for t in first["tasks"]) == ["media-probe", "prepare:thumbnail"]
    last = events[-1]["data"]["jobEvents"]
    assert last["jobState"] == "SUCCEEDED"
    assert last["taskId"] is None

    results = owner.data(MEDIA, {"id": media["id"]})["media"]["results"]
    assert len(results) == 1
    derived = owner.data("query($id: ID!) { media(id: $id) { derived { kind seq contentType } } }", {"id": media["id"]})
    assert derived["media"]["derived"] == [{"kind": "thumbnail", "seq": 0, "contentType": "image/jpeg"}]
    assert results[0]["analyzer"] == "media-probe"
    assert results[0]["analyzerVersion"] == "1.0.0"
    assert results[0]["payload"]["kind"] == "image"
    assert results[0]["payload"]["image"]["exif"]

    # Re-running replaces the result instead of adding a second one.
    job2 = owner.data(ANALYZE, {"m": media["id"], "a": None})["analyzeMedia"]
    list(owner.subscribe(JOB_EVENTS, {"jobId": job2["id"]}))
    [rerun] = owner.data(MEDIA, {"id": media["id"]})["media"]["results"]
    assert rerun["createdAt"] == results[0]["createdAt"]
    assert rerun["updatedAt"] > results[0]["updatedAt"]
    finished = owner.data(
        "query($id: ID!) { job(id: $id) { state tasks { state attempts error { code } } } }", {"id": job2["id"]}
    )["job"]
    assert finished["state"] == "SUCCEEDED"
    assert finished["tasks"][0]["attempts"] == 1


def test_video_is_probed(http: TestClient, people: People, worker: Worker) -> None:
    owner = people.owner
    case_id = new_case(owner, "Video")
    video = make_mp4(seconds=1.0, width=160, height=120, fps=10, audio=True)
    media = owner.upload(case_id, video, filename="clip.mp4", content_type="video/mp4")["data"]["uploadMedia"]
    assert media["kind"] == "VIDEO"
    job = owner.data(ANALYZE, {"m": media["id"], "a": ["media-probe"]})["analyzeMedia"]
    list(owner.subscribe(JOB_EVENTS, {"jobId": job["id"]}))
    [result] = owner.data(MEDIA, {"id": media["id"]})["media"]["results"]
    payload = result["payload"]
    assert payload["width"] == 160 and payload["height"] == 120
    assert abs(payload["duration_s"] - 1.0) < 0.3
    assert {s["type"] for s in payload["streams"]} == {"video", "audio"}


def test_case_lists_its_media_and_jobs(http: TestClient, people: People) -> None:
    owner = people.owner
    case_id = new_case(owner, "Listing")
    owner.upload(case_id, make_jpeg(), filename="a.jpg")
    case = owner.data("query($id: ID!) { case(id: $id) { title media { filename } jobs { id } } }", {"id": case_id})[
        "case"
    ]
    assert case["title"] == "Listing"
    assert [m["filename"] for m in case["media"]] == ["a.jpg"]
    assert case_id in [c["id"] for c in owner.data("{ cases { id } }")["cases"]]
    assert case_id not in [c["id"] for c in people.other.data("{ cases { id } }")["cases"]]


def test_analyzers_are_listed(people: People) -> None:
    analyzers = people.guest.data("{ analyzers { name version mediaKinds runsOn } }")["analyzers"]
    assert {
        "name": "media-probe",
        "version": "1.0.0",
        "mediaKinds": ["AUDIO", "IMAGE", "VIDEO"],
        "runsOn": "cpu",
    } in analyzers


async def _read_object(settings: object, key: str) -> bytes:
    from aima.resources import open_resources
    from aima.settings import Settings

    assert isinstance(settings, Settings)
    async with open_resources(settings, prepare=False) as opened:
        return await opened.store.read(key)
