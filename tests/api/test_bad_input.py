"""Bad input gets a clear error with a stable code, the server stays up, and nothing half-written stays behind."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from aima.resources import Resources
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import ANALYZE, new_case
from tests.gql import run_sync


async def _state(settings: Settings, case_id: str) -> tuple[int, list[str], list[str]]:
    """Media rows, stored objects and pending multipart uploads of a case."""
    from sqlalchemy import func, select

    from aima.db.models import Media
    from aima.resources import open_resources

    async with open_resources(settings, prepare=False) as opened:
        async with opened.sessions() as session:
            rows = await session.scalar(select(func.count()).where(Media.case_id == uuid.UUID(case_id)))
        prefix = f"cases/{case_id}/"
        return (
            int(rows or 0),
            await opened.store.all_versions(prefix),
            await opened.store.pending_multipart_uploads(prefix),
        )


def assert_nothing_stored(settings: Settings, case_id: str) -> None:
    assert run_sync(_state(settings, case_id)) == (0, [], [])


def error_code(body: dict[str, object]) -> str:
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, body
    code: str = errors[0]["extensions"]["code"]
    return code


@pytest.mark.parametrize(
    ("content", "code"),
    [
        pytest.param(b"", "EMPTY_FILE", id="empty"),
        pytest.param(b"just some text, not media\n" * 20, "UNSUPPORTED_MEDIA", id="text"),
        pytest.param(b"%PDF-1.7\n" + b"0" * 200, "UNSUPPORTED_MEDIA", id="pdf"),
        pytest.param(make_jpeg()[:200], "CORRUPT_MEDIA", id="truncated-jpeg"),
    ],
)
def test_bad_uploads_leave_nothing_behind(people: People, settings: Settings, content: bytes, code: str) -> None:
    case_id = new_case(people.owner, "Bad uploads")
    body = people.owner.upload(case_id, content, filename="evidence.jpg", content_type="image/jpeg")
    assert error_code(body) == code
    assert body["errors"][0]["message"]
    assert_nothing_stored(settings, case_id)


def test_an_oversized_upload_is_refused_and_cleaned_up(servers: object, analyzers: object) -> None:
    from aima.app import create_app
    from tests.conftest import Servers, settings_for
    from tests.gql import login

    assert isinstance(servers, Servers)
    small = settings_for(
        servers,
        max_upload_bytes=5 * 1024 * 1024 + 10,
        s3={
            "endpoint_url": servers.s3_url,
            "access_key": servers.s3_access_key,
            "secret_key": servers.s3_secret_key,
            "bucket": "aima-oversize",
            "part_size": 5 * 1024 * 1024,
        },
    )
    with TestClient(create_app(small, analyzers=analyzers)) as http:  # type: ignore[arg-type]
        from aima.cli import create_account
        from aima.db.models import Role

        email = f"big-{uuid.uuid4().hex[:6]}@example.org"
        run_sync(create_account(small, email, "a long enough password", Role.USER))
        client = login(http, email)
        case_id = new_case(client, "Big")
        # Over the limit but inside the envelope allowance: refused by the resolver, before any decoding.
        over = make_jpeg() + b"\0" * (5 * 1024 * 1024 + 100)
        body = client.upload(case_id, over, filename="big.jpg", content_type="image/jpeg")
        assert error_code(body) == "FILE_TOO_LARGE"
        # Far over: refused from Content-Length before the body is read.
        far = make_jpeg() + b"\0" * (7 * 1024 * 1024)
        answer = http.post(
            "/graphql",
            files={"0": ("big.jpg", far, "image/jpeg")},
            data={"operations": "{}", "map": "{}"},
            headers=client.headers(),
        )
        assert answer.status_code == 413
        assert answer.json()["errors"][0]["extensions"]["code"] == "FILE_TOO_LARGE"
        assert http.get("/healthz").status_code == 200
        assert_nothing_stored(small, case_id)


def test_unknown_analyzer_lists_the_available_ones(people: People, settings: Settings) -> None:
    case_id = new_case(people.owner)
    media = people.owner.upload(case_id, make_jpeg(), filename="a.jpg")["data"]["uploadMedia"]
    body = people.owner.execute(ANALYZE, {"m": media["id"], "a": ["llava-next-9000"]})
    assert error_code(body) == "UNKNOWN_ANALYZER"
    assert "media-probe" in body["errors"][0]["message"]
    empty = people.owner.execute(ANALYZE, {"m": media["id"], "a": []})
    assert error_code(empty) == "BAD_USER_INPUT"


def test_ids_of_others_and_missing_ids_look_the_same(people: People) -> None:
    case_id = new_case(people.owner, "Private")
    media = people.owner.upload(case_id, make_jpeg(), filename="a.jpg")["data"]["uploadMedia"]
    for query, ident in (
        ("query($id: ID!) { media(id: $id) { id } }", media["id"]),
        ("query($id: ID!) { case(id: $id) { id } }", case_id),
    ):
        foreign = people.other.execute(query, {"id": ident})
        missing = people.other.execute(query, {"id": str(uuid.uuid4())})
        assert error_code(foreign) == error_code(missing) == "NOT_FOUND"
        assert foreign["data"] is None
    assert error_code(people.other.execute(ANALYZE, {"m": media["id"], "a": None})) == "NOT_FOUND"
    garbage = people.other.execute("query($id: ID!) { media(id: $id) { id } }", {"id": "not-a-uuid"})
    assert error_code(garbage) == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        pytest.param("{ cases { id ", "GRAPHQL_PARSE_FAILED", id="syntax"),
        pytest.param("{ cases { nope } }", "GRAPHQL_VALIDATION_FAILED", id="unknown-field"),
        pytest.param("query { cases { id } } query { cases { id } }", "GRAPHQL_VALIDATION_FAILED", id="ambiguous"),
        pytest.param(
            "{ " + " ".join(f"a{i}: cases {{ id }}" for i in range(40)) + " }",
            "GRAPHQL_VALIDATION_FAILED",
            id="too-many-aliases",
        ),
    ],
)
def test_malformed_queries_get_a_code(people: People, http: TestClient, query: str, code: str) -> None:
    body = people.owner.execute(query)
    assert error_code(body) == code
    assert http.get("/healthz").status_code == 200


def test_a_non_json_body_is_refused(http: TestClient) -> None:
    answer = http.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert http.get("/healthz").status_code == 200


def test_anonymous_uploads_are_refused_before_the_body_is_read(http: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer forged.token.value"}):
        answer = http.post(
            "/graphql",
            files={"0": ("a.jpg", make_jpeg(), "image/jpeg")},
            data={"operations": "{}", "map": "{}"},
            headers=headers,
        )
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_string_where_a_file_belongs_is_refused(people: People) -> None:
    case_id = new_case(people.owner, "Strings")
    body = people.owner.execute(
        "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id } }", {"c": case_id, "f": "x"}
    )
    assert error_code(body) == "BAD_USER_INPUT"


def test_a_failed_registration_removes_the_stored_object(
    people: People, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aima.services import media

    case_id = new_case(people.owner, "Insert fails")
    monkeypatch.setattr(media, "display_name", lambda name: "x" * 600)  # longer than the column: the insert fails
    body = people.owner.upload(case_id, make_jpeg(), filename="a.jpg")
    assert error_code(body) == "INTERNAL_SERVER_ERROR"
    assert_nothing_stored(settings, case_id)


def test_bad_tokens_are_refused(http: TestClient) -> None:
    for header in ("Bearer nonsense", "Basic abc", "Bearer "):
        answer = http.post("/graphql", json={"query": "{ cases { id } }"}, headers={"Authorization": header})
        assert answer.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_unexpected_errors_are_masked(people: People, resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    from aima.services import cases

    async def explode(**kwargs: object) -> None:
        raise RuntimeError("secret connection string postgres://user:pw@db")

    monkeypatch.setattr(cases, "list_cases", explode)
    body = people.owner.execute("{ cases { id } }")
    assert error_code(body) == "INTERNAL_SERVER_ERROR"
    assert "secret" not in body["errors"][0]["message"]


def test_guest_cannot_write(people: People) -> None:
    body = people.guest.execute('mutation { createCase(title: "x") { id } }')
    assert error_code(body) == "FORBIDDEN"


def test_media_longer_than_the_limit_are_refused(servers: object, analyzers: object) -> None:
    """A small file may claim a long duration (a decompression bomb in time): refused, nothing kept."""
    from aima.app import create_app
    from aima.cli import create_account
    from aima.db.models import Role
    from aima.testing.media import make_wav
    from tests.conftest import Servers, settings_for
    from tests.gql import login

    assert isinstance(servers, Servers)
    short = settings_for(servers, uploads={"max_duration_s": 1.5})
    with TestClient(create_app(short, analyzers=analyzers)) as http:  # type: ignore[arg-type]
        email = f"long-{uuid.uuid4().hex[:6]}@example.org"
        run_sync(create_account(short, email, "a long enough password", Role.USER))
        client = login(http, email)
        case_id = new_case(client, "Long")
        assert not client.upload(case_id, make_wav(seconds=1), filename="ok.wav").get("errors")
        body = client.upload(case_id, make_wav(seconds=2), filename="long.wav")
        assert error_code(body) == "UNSUPPORTED_MEDIA" and "limit" in body["errors"][0]["message"]
