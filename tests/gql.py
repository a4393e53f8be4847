"""A small GraphQL client for tests: JSON requests, multipart uploads and graphql-transport-ws subscriptions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.testclient import TestClient

UPLOAD = """
mutation Upload($caseId: ID!, $file: Upload!) {
  uploadMedia(caseId: $caseId, file: $file) { id kind contentType format sizeBytes sha256 filename probe }
}
"""


class GraphQLClient:
    def __init__(self, http: TestClient, token: str | None = None) -> None:
        self.http = http
        self.token = token
        self.refresh_token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=self.headers())
        assert answer.status_code in (200, 400), answer.text
        body: dict[str, Any] = answer.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.execute(query, variables)
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def upload(
        self, case_id: str, content: bytes, filename: str = "file.bin", content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        operations = {"query": UPLOAD, "variables": {"caseId": case_id, "file": None}}
        answer = self.http.post(
            "/graphql",
            data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
            files={"0": (filename, content, content_type)},
            headers=self.headers(),
        )
        assert answer.status_code in (200, 400, 401, 413), answer.text
        body: dict[str, Any] = answer.json()
        return body

    def subscribe(self, query: str, variables: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield each `next` payload until the server completes the subscription."""
        with self.http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {self.token}"}})
            assert ws.receive_json()["type"] == "connection_ack"
            ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})
            while True:
                message = ws.receive_json()
                if message["type"] == "next":
                    yield message["payload"]
                elif message["type"] == "complete":
                    return
                elif message["type"] == "error":
                    yield {"errors": message["payload"]}
                    return


PASSWORD = "a long enough password"


REGISTER = """
mutation($e: String!, $p: String!) {
  register(email: $e, password: $p) { pendingApproval session { accessToken refreshToken } }
}
"""
LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken refreshToken } }"


def register(http: TestClient, email: str, password: str = PASSWORD) -> GraphQLClient:
    """A client holding the access token of a new account (open registration)."""
    client = GraphQLClient(http)
    session = client.data(REGISTER, {"e": email, "p": password})["register"]["session"]
    client.token, client.refresh_token = session["accessToken"], session["refreshToken"]
    return client


def login(http: TestClient, email: str, password: str = PASSWORD) -> GraphQLClient:
    """A client holding the tokens `login` returned."""
    client = GraphQLClient(http)
    data = client.data(LOGIN, {"e": email, "p": password})["login"]
    client.token, client.refresh_token = data["accessToken"], data["refreshToken"]
    return client


def run_sync(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync test code, in a thread, away from pytest-asyncio's loop."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
