"""Resumable uploads: parts go straight to S3 over presigned URLs; a broken upload resumes; nothing half-done stays."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Role
from aima.plugins import AnalyzerRegistry
from aima.resources import open_resources
from aima.services.uploads import sweep_abandoned_uploads
from aima.settings import Settings
from aima.testing.media import make_wav
from tests.api.test_bad_input import assert_nothing_stored, error_code
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for
from tests.gql import PASSWORD, GraphQLClient, login, run_sync

PART = 5 * 1024 * 1024
START = """
mutation($c: ID!, $f: String!, $s: Float!, $h: String) {
  startUpload(caseId: $c, filename: $f, sizeBytes: $s, sha256: $h) {
    uploadId partSize partCount parts { number url } urlsExpireAt expiresAt
  }
}
"""
STATUS = (
    "query($u: ID!) { uploadStatus(uploadId: $u) { partCount receivedBytes missingParts receivedParts { number } } }"
)
COMPLETE = """
mutation($u: ID!) {
  completeUpload(uploadId: $u) { id kind sha256 sizeBytes duplicate custody { ingest sha256 uploadedByEmail } }
}
"""


@pytest.fixture(scope="module")
def api(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[tuple[TestClient, Settings, GraphQLClient, str]]:
    """An API offering 5 MiB parts (S3's minimum), with a signed-in user and a case of theirs."""
    settings = settings_for(servers, uploads={"resumable_part_bytes": PART})
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        email = f"resumer-{uuid.uuid4().hex[:6]}@example.org"
        run_sync(create_account(settings, email, PASSWORD, Role.USER))
        client = login(http, email)
        yield http, settings, client, email


def put_part(url: str, data: bytes) -> None:
    answer = httpx.put(url, content=data, timeout=30)
    assert answer.status_code == 200, answer.text


def parts_of(content: bytes) -> list[bytes]:
    return [content[i : i + PART] for i in range(0, len(content), PART)]


def start(client: GraphQLClient, case_id: str, content: bytes, sha256: str | None = None) -> dict[str, Any]:
    variables = {"c": case_id, "f": "interview.wav", "s": float(len(content)), "h": sha256}
    started: dict[str, Any] = client.data(START, variables)["startUpload"]
    return started


def test_a_broken_upload_resumes_and_completes(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    _, _, client, email = api
    case_id = new_case(client, "Resumable")
    content = make_wav(seconds=40, rate=48_000, channels=2)  # 7.7 MB: two parts
    sha256 = hashlib.sha256(content).hexdigest()
    started = start(client, case_id, content, sha256)
    assert (started["partSize"], started["partCount"]) == (PART, 2)
    pieces = parts_of(content)
    put_part(started["parts"][1]["url"], pieces[1])  # the first part is lost with the connection

    status = client.data(STATUS, {"u": started["uploadId"]})["uploadStatus"]
    assert status["missingParts"] == [1] and status["receivedBytes"] == len(pieces[1])
    early = client.execute(COMPLETE, {"u": started["uploadId"]})
    assert error_code(early) == "UPLOAD_INCOMPLETE"

    put_part(started["parts"][0]["url"], pieces[0])
    assert client.data(STATUS, {"u": started["uploadId"]})["uploadStatus"]["missingParts"] == []
    media = client.data(COMPLETE, {"u": started["uploadId"]})["completeUpload"]
    assert media["kind"] == "AUDIO" and media["sha256"] == sha256 and media["sizeBytes"] == len(content)
    assert media["custody"] == {"ingest": "resumable", "sha256": sha256, "uploadedByEmail": email}
    again = client.execute(COMPLETE, {"u": started["uploadId"]})
    assert error_code(again) == "BAD_USER_INPUT"  # completed already


def test_more_part_urls_on_request(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    _, _, client, _ = api
    case_id = new_case(client, "Urls")
    started = start(client, case_id, b"x" * (3 * PART))
    urls = client.data(
        "mutation($u: ID!) { uploadPartUrls(uploadId: $u, partNumbers: [3, 2]) { number url } }",
        {"u": started["uploadId"]},
    )["uploadPartUrls"]
    assert [u["number"] for u in urls] == [2, 3]
    bad = client.execute(
        "mutation($u: ID!) { uploadPartUrls(uploadId: $u, partNumbers: [4]) { number } }", {"u": started["uploadId"]}
    )
    assert error_code(bad) == "BAD_USER_INPUT"
    client.data("mutation($u: ID!) { abortUpload(uploadId: $u) }", {"u": started["uploadId"]})


def test_a_wrong_checksum_registers_nothing(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    _, settings, client, _ = api
    case_id = new_case(client, "Checksum")
    content = make_wav(seconds=2)
    started = start(client, case_id, content, "0" * 64)
    put_part(started["parts"][0]["url"], content)
    assert error_code(client.execute(COMPLETE, {"u": started["uploadId"]})) == "CHECKSUM_MISMATCH"
    assert_nothing_stored(settings, case_id)


def test_not_media_registers_nothing(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    _, settings, client, _ = api
    case_id = new_case(client, "Not media")
    content = b"%PDF-1.7\n" + b"0" * 5000
    started = start(client, case_id, content)
    put_part(started["parts"][0]["url"], content)
    assert error_code(client.execute(COMPLETE, {"u": started["uploadId"]})) == "UNSUPPORTED_MEDIA"
    assert_nothing_stored(settings, case_id)


def test_uploads_of_others_are_invisible(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    http, settings, client, _ = api
    case_id = new_case(client, "Private upload")
    started = start(client, case_id, b"x" * 100)
    email = f"nosy-{uuid.uuid4().hex[:6]}@example.org"
    run_sync(create_account(settings, email, PASSWORD, Role.USER))
    nosy = login(http, email)
    assert error_code(nosy.execute(STATUS, {"u": started["uploadId"]})) == "NOT_FOUND"
    assert error_code(nosy.execute(COMPLETE, {"u": started["uploadId"]})) == "NOT_FOUND"
    refused = nosy.execute(START, {"c": case_id, "f": "x.wav", "s": 100.0, "h": None})
    assert error_code(refused) == "NOT_FOUND"


def test_abandoned_uploads_are_swept(api: tuple[TestClient, Settings, GraphQLClient, str]) -> None:
    _, settings, client, _ = api
    case_id = new_case(client, "Abandoned")
    content = make_wav(seconds=40, rate=48_000, channels=2)
    started = start(client, case_id, content)
    put_part(started["parts"][0]["url"], parts_of(content)[0])

    async def sweep() -> int:
        async with open_resources(settings, prepare=False) as resources:
            return await sweep_abandoned_uploads(resources, now=datetime.now(UTC) + timedelta(days=2))

    assert run_sync(sweep()) >= 1
    assert_nothing_stored(settings, case_id)
    assert error_code(client.execute(STATUS, {"u": started["uploadId"]})) == "BAD_USER_INPUT"  # aborted
