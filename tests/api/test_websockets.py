"""Websockets: only graphql-transport-ws, only allowed browser origins, and no subscription outlives its session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from aima.app import create_app
from aima.plugins import AnalyzerRegistry
from aima.security import issue_access_token
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import JOB_EVENTS, new_case
from tests.conftest import Servers, settings_for
from tests.gql import GraphQLClient, register


@pytest.fixture(scope="module")
def quiet(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[tuple[TestClient, Settings]]:
    """An API on a queue of its own that no worker serves: its jobs stay queued, their subscriptions open."""
    settings = settings_for(servers)
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        yield http, settings


def queued_job(client: GraphQLClient) -> str:
    """A job that stays queued, so its subscription stays open."""
    case_id = new_case(client, "Open subscription")
    media_id = client.upload(case_id, make_jpeg(), filename="a.jpg")["data"]["uploadMedia"]["id"]
    job_id: str = client.data("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": media_id})[
        "analyzeMedia"
    ]["id"]
    return job_id


def subscribe(http: TestClient, token: str, job_id: str) -> Any:
    ws = http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"])
    session = ws.__enter__()
    session.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    assert session.receive_json()["type"] == "connection_ack"
    session.send_json(
        {"id": "1", "type": "subscribe", "payload": {"query": JOB_EVENTS, "variables": {"jobId": job_id}}}
    )
    first = session.receive_json()
    assert first["type"] == "next" and first["payload"]["data"]["jobEvents"]["jobId"] == job_id, first
    return ws, session


def test_a_subscription_ends_when_its_session_ends(quiet: tuple[TestClient, Settings]) -> None:
    http, _ = quiet
    client = register(http, f"ws-end-{uuid.uuid4().hex[:6]}@example.org")
    ws, session = subscribe(http, client.token or "", queued_job(client))
    try:
        client.data("mutation { logout }")
        message = session.receive_json()  # within REVALIDATE_S (2 s)
        assert message["type"] == "next" and message["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        ws.__exit__(None, None, None)


def test_a_subscription_ends_when_its_token_expires(quiet: tuple[TestClient, Settings]) -> None:
    http, settings = quiet
    client = register(http, f"ws-exp-{uuid.uuid4().hex[:6]}@example.org")
    job_id = queued_job(client)
    user_id = uuid.UUID(client.data("{ me { id } }")["me"]["id"])
    lifetime = timedelta(minutes=settings.auth.access_token_minutes)
    almost_expired = issue_access_token(settings.auth, user_id, now=datetime.now(UTC) - lifetime + timedelta(seconds=2))
    ws, session = subscribe(http, almost_expired.token, job_id)
    try:
        message = session.receive_json()
        assert message["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", message
        assert datetime.now(UTC) >= almost_expired.expires_at.replace(microsecond=0)  # `exp` has whole seconds
    finally:
        ws.__exit__(None, None, None)


def test_other_browser_origins_are_refused(http: TestClient, people: People) -> None:
    with (
        pytest.raises(WebSocketDisconnect),
        http.websocket_connect(
            "/graphql", subprotocols=["graphql-transport-ws"], headers={"origin": "https://evil.example"}
        ) as ws,
    ):
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {people.owner.token}"}})
        ws.receive_json()


def test_an_allowed_origin_is_accepted(http: TestClient, people: People) -> None:
    with http.websocket_connect(
        "/graphql", subprotocols=["graphql-transport-ws"], headers={"origin": "http://localhost:8000"}
    ) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {people.owner.token}"}})
        assert ws.receive_json()["type"] == "connection_ack"


def test_only_graphql_transport_ws_is_spoken(http: TestClient, people: People) -> None:
    with pytest.raises(WebSocketDisconnect), http.websocket_connect("/graphql", subprotocols=["graphql-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {people.owner.token}"}})
        ws.receive_json()
