"""Sharing a case: viewers read, editors also add media and start analyses, owners share; all of it audited."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.gql import GraphQLClient, register

SHARE = "mutation($c: ID!, $e: String!, $r: CaseRole!) { shareCase(caseId: $c, email: $e, role: $r) { userId role } }"
UNSHARE = "mutation($c: ID!, $u: ID!) { unshareCase(caseId: $c, userId: $u) }"
CASE = "query($id: ID!) { case(id: $id) { id myAccess members { email role } } }"


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


def fresh(http: TestClient) -> tuple[GraphQLClient, str]:
    email = f"member-{uuid.uuid4().hex[:6]}@example.org"
    return register(http, email), email


def test_share_change_role_and_unshare(http: TestClient, people: People) -> None:
    member, email = fresh(http)
    case_id = new_case(people.owner, "Shared work")
    assert code(member.execute(CASE, {"id": case_id})) == "NOT_FOUND"

    shared = people.owner.data(SHARE, {"c": case_id, "e": email.upper(), "r": "VIEWER"})["shareCase"]
    assert member.data(CASE, {"id": case_id})["case"]["myAccess"] == "VIEWER"
    assert code(member.upload(case_id, make_jpeg())) == "FORBIDDEN"

    people.owner.data(SHARE, {"c": case_id, "e": email, "r": "EDITOR"})
    assert member.data(CASE, {"id": case_id})["case"]["myAccess"] == "EDITOR"
    assert not member.upload(case_id, make_jpeg(width=21)).get("errors")
    assert code(member.execute(SHARE, {"c": case_id, "e": people.emails["viewer"], "r": "VIEWER"})) == "FORBIDDEN"
    members = people.owner.data(CASE, {"id": case_id})["case"]["members"]
    assert members == [{"email": email, "role": "EDITOR"}]

    assert people.owner.data(UNSHARE, {"c": case_id, "u": shared["userId"]})["unshareCase"] is True
    assert code(member.execute(CASE, {"id": case_id})) == "NOT_FOUND"  # at once
    assert people.owner.data(UNSHARE, {"c": case_id, "u": shared["userId"]})["unshareCase"] is False

    trail = people.admin.data(
        "query($t: String) { auditLog(targetId: $t) { action actorEmail details } }", {"t": case_id}
    )["auditLog"]
    actions = [entry["action"] for entry in reversed(trail)]
    assert actions == ["case.create", "case.share", "case.share", "case.unshare"]
    assert trail[1]["details"]["from"] == "viewer" and trail[1]["details"]["role"] == "editor"


def test_a_member_may_leave_a_case(http: TestClient, people: People) -> None:
    member, email = fresh(http)
    case_id = new_case(people.owner, "Leaving")
    user_id = people.owner.data(SHARE, {"c": case_id, "e": email, "r": "VIEWER"})["shareCase"]["userId"]
    assert member.data(UNSHARE, {"c": case_id, "u": user_id})["unshareCase"] is True
    assert code(member.execute(CASE, {"id": case_id})) == "NOT_FOUND"


def test_guests_are_viewers_only(people: People) -> None:
    case_id = new_case(people.owner, "Guest share")
    refused = people.owner.execute(SHARE, {"c": case_id, "e": people.emails["guest"], "r": "EDITOR"})
    assert code(refused) == "BAD_USER_INPUT"
    people.owner.data(SHARE, {"c": case_id, "e": people.emails["guest"], "r": "VIEWER"})
    assert people.guest.data(CASE, {"id": case_id})["case"]["myAccess"] == "VIEWER"
    assert code(people.guest.upload(case_id, make_jpeg())) == "FORBIDDEN"


def test_sharing_mistakes_get_clear_errors(people: People) -> None:
    case_id = new_case(people.owner, "Mistakes")
    unknown = people.owner.execute(SHARE, {"c": case_id, "e": "nobody-here@example.org", "r": "VIEWER"})
    assert code(unknown) == "NOT_FOUND"
    own = people.owner.execute(SHARE, {"c": case_id, "e": people.emails["owner"], "r": "VIEWER"})
    assert code(own) == "BAD_USER_INPUT"
    foreign = people.other.execute(SHARE, {"c": case_id, "e": people.emails["other"], "r": "EDITOR"})
    assert code(foreign) == "NOT_FOUND"  # nobody shares themselves into a case they cannot see


def test_administrators_may_share_any_case(people: People) -> None:
    case_id = new_case(people.owner, "Admin share")
    people.admin.data(SHARE, {"c": case_id, "e": people.emails["viewer"], "r": "VIEWER"})
    assert people.viewer.data(CASE, {"id": case_id})["case"]["myAccess"] == "VIEWER"
