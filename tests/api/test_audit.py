"""The audit trail as the API writes it and administrators read it."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from aima.cli import app
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import MEDIA, new_case
from tests.gql import GraphQLClient

AUDIT = """
query($action: String, $target: String) {
  auditLog(action: $action, targetId: $target, first: 20) {
    id at actorId actorEmail action targetType targetId clientAddress details hash
  }
}
"""


def entries(admin: GraphQLClient, action: str, target: str | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = admin.data(AUDIT, {"action": action, "target": target})["auditLog"]
    return rows


def test_sign_ins_and_failures_are_recorded(http: TestClient, people: People) -> None:
    email = f"nobody-{uuid.uuid4().hex[:6]}@example.org"
    GraphQLClient(http).execute(
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
        {"e": email, "p": "wrong password!!"},
    )
    [failed] = [e for e in entries(people.admin, "auth.login_failed") if e["actorEmail"] == email]
    assert failed["actorId"] is None
    assert failed["clientAddress"] == "testclient"
    logins = entries(people.admin, "auth.login")
    assert logins and all(e["actorId"] for e in logins)


def test_uploads_and_result_reads_are_recorded(people: People) -> None:
    case_id = new_case(people.owner, "Audited")
    image = make_jpeg()
    media = people.owner.upload(case_id, image, filename="evidence.jpg")["data"]["uploadMedia"]
    [upload] = entries(people.admin, "media.upload", media["id"])
    details = upload["details"]
    assert isinstance(details, dict)
    assert details["sha256"] == media["sha256"] and details["case_id"] == case_id
    assert entries(people.admin, "case.create", case_id)
    people.owner.data(MEDIA, {"id": media["id"]})
    [read] = entries(people.admin, "media.results_read", media["id"])
    owner_id = people.owner.data("{ me { id } }")["me"]["id"]
    assert read["actorId"] == owner_id


@pytest.mark.parametrize("role", ["owner", "other", "guest"])
def test_only_administrators_read_the_trail(people: People, role: str) -> None:
    body = getattr(people, role).execute(AUDIT, {"action": None, "target": None})
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_aima_audit_verify_checks_the_chain(
    settings: Settings, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMA_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AIMA_ENVIRONMENT", "test")
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "audit trail intact" in result.output
