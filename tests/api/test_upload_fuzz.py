"""Hostile uploads: corrupt, truncated, polyglot and bomb files, and a connection dropped mid-upload.

Every one gets a clear error code (or, when a damaged file still decodes, becomes media like any other); the API
stays up; and nothing is left in S3 that has no media row, nor any multipart upload.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect
from starlette.testclient import TestClient

from aima.db.models import Role
from aima.resources import Resources
from aima.services.access import Actor
from aima.services.media import upload_media
from aima.settings import Settings
from aima.testing import media
from tests.api.conftest import People
from tests.api.test_bad_input import _state
from tests.api.test_flow import new_case
from tests.gql import run_sync

ALLOWED_REFUSALS = {"EMPTY_FILE", "UNSUPPORTED_MEDIA", "CORRUPT_MEDIA", "FILE_TOO_LARGE"}
SAMPLES = [
    media.make_jpeg(),
    media.make_png(),
    media.make_gif(),
    media.make_webp(),
    media.make_mp4(seconds=0.5),
    media.make_mkv(seconds=0.5),
    media.make_wav(seconds=0.5),
    media.make_mp3(seconds=0.5),
    media.make_flac(seconds=0.5),
]
TAILS = [b"%PDF-1.7\n1 0 obj<<>>endobj\n", b"PK\x03\x04" + b"\0" * 26, b"<html><script>alert(1)</script>", b"#EXTM3U\n"]


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    sample = draw(st.sampled_from(SAMPLES))
    how = draw(st.sampled_from(["truncate", "flip", "polyglot", "prefix", "bomb", "noise"]))
    if how == "truncate":
        return sample[: draw(st.integers(min_value=0, max_value=len(sample) - 1))]
    if how == "flip":
        data = bytearray(sample)
        for _ in range(draw(st.integers(min_value=1, max_value=20))):
            i = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[i] = draw(st.integers(min_value=0, max_value=255))
        return bytes(data)
    if how == "polyglot":
        tail = draw(st.sampled_from(TAILS))
        return sample + tail if draw(st.booleans()) else tail + sample
    if how == "prefix":
        return sample[:16] + draw(st.binary(min_size=0, max_size=2000))
    if how == "bomb":
        return media.make_png_bomb()
    return draw(st.binary(min_size=0, max_size=3000))


@pytest.fixture(scope="module")
def fuzz_case(people: People) -> str:
    return new_case(people.owner, "Fuzz")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=hostile_files())
def test_hostile_uploads_get_clear_errors(http: TestClient, people: People, fuzz_case: str, content: bytes) -> None:
    body = people.owner.upload(fuzz_case, content, filename="hostile.bin")
    if body.get("errors"):
        assert body["errors"][0]["extensions"]["code"] in ALLOWED_REFUSALS, body
    else:
        assert body["data"]["uploadMedia"]["id"]
    assert http.get("/healthz").status_code == 200


def test_fuzzed_case_holds_only_registered_objects(people: People, settings: Settings, fuzz_case: str) -> None:
    """Runs after the fuzzing above: every object left under the case belongs to a media row."""
    rows, keys, pending = run_sync(_state(settings, fuzz_case))
    assert pending == []
    assert len(keys) == rows


class DroppingUpload:
    """An upload whose connection drops after `after` bytes."""

    filename = "dropped.mp4"

    def __init__(self, content: bytes, after: int) -> None:
        self._content = content
        self._after = after

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self._after:
            yield self._content[sent : sent + 1024 * 1024]
            sent += 1024 * 1024
        raise ClientDisconnect()


async def test_a_connection_dropped_mid_upload_leaves_nothing(
    resources: Resources, settings: Settings, people: People
) -> None:
    case_id = new_case(people.owner, "Dropped")
    me = people.owner.data("{ me { id email } }")["me"]
    actor = Actor(user_id=uuid.UUID(me["id"]), email=me["email"], role=Role.USER)
    content = media.make_mp4(seconds=0.5) + b"\0" * (20 * 1024 * 1024)
    part = resources.store.part_size
    with pytest.raises(ClientDisconnect):
        await upload_media(
            resources=resources,
            actor=actor,
            case_id=uuid.UUID(case_id),
            upload=DroppingUpload(content, after=part + 2 * 1024 * 1024),  # past the first part: multipart began
        )
    prefix = f"cases/{case_id}/"
    assert await resources.store.keys(prefix) == []
    assert await resources.store.pending_multipart_uploads(prefix) == []
