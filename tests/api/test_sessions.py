"""Ending sessions takes effect on the very next request: logout, logout everywhere, password change."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from tests.gql import PASSWORD, GraphQLClient, login, register

ME = "{ me { email } }"


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


def test_logout_ends_only_this_session(http: TestClient) -> None:
    email = f"out-{uuid.uuid4().hex[:6]}@example.org"
    first = register(http, email)
    second = login(http, email)
    assert first.data("mutation { logout }") == {"logout": True}
    assert code(first.execute(ME)) == "UNAUTHENTICATED"
    assert second.data(ME)["me"]["email"] == email


def test_logout_everywhere_ends_every_session(http: TestClient) -> None:
    email = f"all-{uuid.uuid4().hex[:6]}@example.org"
    first = register(http, email)
    second = login(http, email)
    assert first.data("mutation { logoutEverywhere }") == {"logoutEverywhere": True}
    assert code(first.execute(ME)) == code(second.execute(ME)) == "UNAUTHENTICATED"
    assert login(http, email).data(ME)["me"]["email"] == email  # signing in again works


def test_a_password_change_ends_the_other_sessions(http: TestClient) -> None:
    email = f"pw-{uuid.uuid4().hex[:6]}@example.org"
    here = register(http, email)
    elsewhere = login(http, email)
    change = """
    mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { accessToken } }
    """
    wrong = here.execute(change, {"c": "not my password", "n": "a brand new passphrase"})
    assert code(wrong) == "INVALID_CREDENTIALS"
    weak = here.execute(change, {"c": PASSWORD, "n": "1qaz2wsx3edc"})
    assert code(weak) == "BAD_USER_INPUT"
    changed = here.data(change, {"c": PASSWORD, "n": "a brand new passphrase"})
    assert code(elsewhere.execute(ME)) == "UNAUTHENTICATED"
    assert code(here.execute(ME)) == "UNAUTHENTICATED"  # the old token of this session too
    here.token = changed["changePassword"]["accessToken"]
    assert here.data(ME)["me"]["email"] == email
    assert (
        code(
            GraphQLClient(http).execute(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                {"e": email, "p": PASSWORD},
            )
        )
        == "INVALID_CREDENTIALS"
    )
    assert login(http, email, "a brand new passphrase").data(ME)["me"]["email"] == email


def test_a_websocket_of_an_ended_session_is_refused(http: TestClient) -> None:
    email = f"ws-{uuid.uuid4().hex[:6]}@example.org"
    client = register(http, email)
    token = client.token
    client.data("mutation { logout }")
    with http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        try:
            ws.receive_json()
            refused = False
        except Exception as exc:  # the server closes with 4403
            refused = getattr(exc, "code", None) == 4403
    assert refused


def test_guessing_the_current_password_is_throttled(http: TestClient) -> None:
    client = register(http, f"guess-{uuid.uuid4().hex[:6]}@example.org")
    change = """
    mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { accessToken } }
    """
    codes = [code(client.execute(change, {"c": f"guess number {n}", "n": "a brand new passphrase"})) for n in range(7)]
    assert codes[:5] == ["INVALID_CREDENTIALS"] * 5
    assert "RATE_LIMITED" in codes[5:]
