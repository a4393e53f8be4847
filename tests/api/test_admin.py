"""What administrators do to accounts, and that nobody else can."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from tests.api.conftest import People
from tests.gql import GraphQLClient, login, register

USERS = "query($s: String) { users(search: $s) { id email role active } }"
SET_ROLE = "mutation($u: ID!, $r: Role!) { setUserRole(userId: $u, role: $r) { id role } }"
SET_ACTIVE = "mutation($u: ID!, $a: Boolean!) { setUserActive(userId: $u, active: $a) { id active } }"
END = "mutation($u: ID!) { endUserSessions(userId: $u) }"


def new_account(http: TestClient) -> tuple[GraphQLClient, str, str]:
    email = f"managed-{uuid.uuid4().hex[:6]}@example.org"
    client = register(http, email)
    return client, email, client.data("{ me { id } }")["me"]["id"]


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


def test_admins_find_users_and_change_roles(http: TestClient, people: People) -> None:
    client, email, user_id = new_account(http)
    [found] = people.admin.data(USERS, {"s": email.split("@")[0]})["users"]
    assert found == {"id": user_id, "email": email, "role": "USER", "active": True}
    assert people.admin.data(SET_ROLE, {"u": user_id, "r": "GUEST"})["setUserRole"]["role"] == "GUEST"
    assert code(client.execute('mutation { createCase(title: "x") { id } }')) == "FORBIDDEN"  # a guest now
    [entry] = people.admin.data(
        'query($t: String) { auditLog(action: "user.role_change", targetId: $t) { details } }', {"t": user_id}
    )["auditLog"]
    assert entry["details"] == {"from": "user", "to": "guest"}


def test_search_treats_wildcards_literally(people: People) -> None:
    assert people.admin.data(USERS, {"s": "%"})["users"] == []


def test_deactivation_ends_sessions_and_sign_in(http: TestClient, people: People) -> None:
    client, email, user_id = new_account(http)
    assert people.admin.data(SET_ACTIVE, {"u": user_id, "a": False})["setUserActive"]["active"] is False
    assert code(client.execute("{ me { id } }")) == "UNAUTHENTICATED"
    again = GraphQLClient(http).execute(
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
        {"e": email, "p": "a long enough password"},
    )
    assert code(again) == "INVALID_CREDENTIALS"
    people.admin.data(SET_ACTIVE, {"u": user_id, "a": True})
    assert login(http, email).data("{ me { email } }")["me"]["email"] == email


def test_admins_end_a_users_sessions(http: TestClient, people: People) -> None:
    client, _, user_id = new_account(http)
    assert people.admin.data(END, {"u": user_id}) == {"endUserSessions": True}
    assert code(client.execute("{ me { id } }")) == "UNAUTHENTICATED"
    assert code(people.admin.execute(END, {"u": str(uuid.uuid4())})) == "NOT_FOUND"


def test_admins_cannot_lock_themselves_out(people: People) -> None:
    me = people.admin.data("{ me { id } }")["me"]["id"]
    assert code(people.admin.execute(SET_ROLE, {"u": me, "r": "USER"})) == "BAD_USER_INPUT"
    assert code(people.admin.execute(SET_ACTIVE, {"u": me, "a": False})) == "BAD_USER_INPUT"


@pytest.mark.parametrize("role", ["owner", "other", "guest"])
def test_only_admins_manage_accounts(people: People, role: str) -> None:
    client: GraphQLClient = getattr(people, role)
    target = people.admin.data("{ me { id } }")["me"]["id"]
    for query, variables in (
        (USERS, {"s": None}),
        (SET_ROLE, {"u": target, "r": "GUEST"}),
        (SET_ACTIVE, {"u": target, "a": False}),
        (END, {"u": target}),
    ):
        assert code(client.execute(query, variables)) == "FORBIDDEN", query
