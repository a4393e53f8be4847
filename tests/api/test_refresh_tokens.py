"""Refresh tokens: opaque, stored hashed, spent on use; a spent token presented again ends its whole sign-in."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from aima.settings import Settings
from tests.api.conftest import People
from tests.gql import PASSWORD, GraphQLClient, login, register, run_sync

ME = "{ me { email } }"
REFRESH = "mutation($r: String!) { refreshSession(refreshToken: $r) { accessToken refreshToken user { email } } }"


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


def refreshed(http: TestClient, refresh_token: str) -> GraphQLClient:
    data = GraphQLClient(http).data(REFRESH, {"r": refresh_token})["refreshSession"]
    client = GraphQLClient(http, data["accessToken"])
    client.refresh_token = data["refreshToken"]
    return client


def account(http: TestClient) -> tuple[GraphQLClient, str]:
    email = f"refresh-{uuid.uuid4().hex[:6]}@example.org"
    return register(http, email), email


def test_a_refresh_token_gives_a_new_pair_and_is_spent(http: TestClient) -> None:
    client, email = account(http)
    assert client.refresh_token and client.refresh_token.startswith("aimar_")
    fresh = refreshed(http, client.refresh_token)
    assert fresh.data(ME)["me"]["email"] == email
    assert fresh.refresh_token != client.refresh_token
    assert client.data(ME)["me"]["email"] == email  # the earlier access token lives on until it expires
    again = refreshed(http, fresh.refresh_token or "")
    assert again.data(ME)["me"]["email"] == email


def test_reuse_of_a_spent_token_ends_the_whole_family(http: TestClient, people: People) -> None:
    client, email = account(http)
    thief = refreshed(http, client.refresh_token or "")  # the attacker uses the stolen token first
    reused = GraphQLClient(http).execute(REFRESH, {"r": client.refresh_token})  # the victim's client tries it
    assert code(reused) == "UNAUTHENTICATED"
    for holder in (client, thief):
        assert code(holder.execute(ME)) == "UNAUTHENTICATED"  # every access token of the family ends at once
    assert code(GraphQLClient(http).execute(REFRESH, {"r": thief.refresh_token})) == "UNAUTHENTICATED"
    assert login(http, email).data(ME)["me"]["email"] == email  # signing in again starts a new family
    entries = people.admin.data('{ auditLog(action: "auth.refresh_reuse", first: 5) { targetId details } }')
    user_id = login(http, email).data("{ me { id } }")["me"]["id"]
    assert any(e["targetId"] == user_id for e in entries["auditLog"])


def test_other_sign_ins_survive_a_reuse(http: TestClient) -> None:
    client, email = account(http)
    laptop = login(http, email)
    refreshed(http, client.refresh_token or "")
    GraphQLClient(http).execute(REFRESH, {"r": client.refresh_token})
    assert laptop.data(ME)["me"]["email"] == email
    assert refreshed(http, laptop.refresh_token or "").data(ME)["me"]["email"] == email


def test_logout_ends_the_refresh_token_too(http: TestClient) -> None:
    client, _ = account(http)
    client.data("mutation { logout }")
    assert code(GraphQLClient(http).execute(REFRESH, {"r": client.refresh_token})) == "UNAUTHENTICATED"


def test_logout_everywhere_and_password_change_end_every_refresh_token(http: TestClient) -> None:
    client, email = account(http)
    laptop = login(http, email)
    client.data("mutation { logoutEverywhere }")
    for holder in (client, laptop):
        assert code(GraphQLClient(http).execute(REFRESH, {"r": holder.refresh_token})) == "UNAUTHENTICATED"

    here = login(http, email)
    phone = login(http, email)
    changed = here.data(
        "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { refreshToken } }",
        {"c": PASSWORD, "n": "another long passphrase"},
    )["changePassword"]
    assert code(GraphQLClient(http).execute(REFRESH, {"r": phone.refresh_token})) == "UNAUTHENTICATED"
    assert refreshed(http, changed["refreshToken"]).data(ME)["me"]["email"] == email


def test_a_deactivated_account_cannot_refresh(http: TestClient, people: People) -> None:
    client, _ = account(http)
    user_id = client.data("{ me { id } }")["me"]["id"]
    people.admin.data("mutation($u: ID!) { setUserActive(userId: $u, active: false) { id } }", {"u": user_id})
    assert code(GraphQLClient(http).execute(REFRESH, {"r": client.refresh_token})) == "UNAUTHENTICATED"


def test_garbage_and_access_tokens_are_not_refresh_tokens(http: TestClient) -> None:
    client, _ = account(http)
    for bad in ("", "aimar_nope", client.token or "", (client.refresh_token or "") + "x"):
        assert code(GraphQLClient(http).execute(REFRESH, {"r": bad})) == "UNAUTHENTICATED"


def test_only_the_hash_is_stored(http: TestClient, settings: Settings) -> None:
    client, _ = account(http)
    token = client.refresh_token or ""

    async def stored() -> list[str]:
        engine = create_async_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text("SELECT token_hash FROM refresh_tokens"))).scalars())
        finally:
            await engine.dispose()

    hashes = run_sync(stored())
    assert hashlib.sha256(token.encode()).hexdigest() in hashes
    assert all(token not in value for value in hashes)
