"""Forged, altered and misused tokens against the running API, over HTTP and websockets: all refused alike."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from aima.settings import Settings
from tests.api.conftest import People

Forgery = Callable[[dict[str, Any], str, str], str]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _sign(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": "k1"})


def _expired(claims: dict[str, Any], secret: str, _: str) -> str:
    return _sign({**claims, "exp": int((datetime.now(UTC) - timedelta(seconds=5)).timestamp())}, secret)


def _tampered(claims: dict[str, Any], secret: str, admin_id: str) -> str:
    """A valid signature over the victim's claims, with the payload changed to name the administrator."""
    header, _payload, signature = _sign(claims, secret).split(".")
    return f"{header}.{_b64({**claims, 'sub': admin_id})}.{signature}"


FORGERIES: dict[str, Forgery] = {
    "alg-none": lambda c, s, a: jwt.encode(c, None, algorithm="none", headers={"kid": "k1"}),
    "alg-none-uppercase": lambda c, s, a: f"{_b64({'alg': 'NONE', 'kid': 'k1'})}.{_b64(c)}.",
    "wrong-audience": lambda c, s, a: _sign({**c, "aud": "another-service"}, s),
    "wrong-issuer": lambda c, s, a: _sign({**c, "iss": "someone"}, s),
    "expired": _expired,
    "other-hmac": lambda c, s, a: _sign(c, s, "HS512"),
    "foreign-key": lambda c, s, a: _sign(c, "a-different-secret-that-is-long-enough-00"),
    "escalated-subject": lambda c, s, a: _tampered(c, s, a),
    "not-an-access-token": lambda c, s, a: _sign({**c, "typ": "refresh"}, s),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_tokens_are_refused(http: TestClient, people: People, settings: Settings, forgery: str) -> None:
    claims = jwt.decode(people.owner.token or "", options={"verify_signature": False})
    admin_id = people.admin.data("{ me { id } }")["me"]["id"]
    token = FORGERIES[forgery](claims, settings.auth.jwt_secret.get_secret_value(), admin_id)
    body = http.post("/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": f"Bearer {token}"}).json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    with http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        with pytest.raises(Exception) as closed:
            ws.receive_json()
        assert getattr(closed.value, "code", None) == 4403


def test_a_refresh_token_is_not_an_access_token(http: TestClient, people: People) -> None:
    headers = {"Authorization": f"Bearer {people.owner.refresh_token}"}
    body = http.post("/graphql", json={"query": "{ me { id } }"}, headers=headers).json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
