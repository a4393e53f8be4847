"""Health, readiness, metrics, request ids and the checked-in schema."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from aima.graphql.schema import schema_sdl
from tests.api.conftest import People

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "graphql" / "schema.graphql"


def test_checked_in_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_sdl(), (
        "graphql/schema.graphql is stale: run `aima schema --output graphql/schema.graphql`"
    )


def test_healthz(http: TestClient) -> None:
    answer = http.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_readyz_names_every_backend(http: TestClient) -> None:
    answer = http.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"] == {name: "ok" for name in ("postgresql", "mongodb", "milvus", "s3", "redis")}


def test_request_ids_are_echoed_or_made(http: TestClient) -> None:
    assert http.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = http.get("/healthz", headers={"x-request-id": "bad id\n"}).headers["x-request-id"]
    assert made != "bad id\n" and len(made) == 32


def test_metrics_count_requests_and_operations(http: TestClient, people: People) -> None:
    people.owner.data("{ cases { id } }")
    text = http.get("/metrics").text
    assert 'aima_http_requests_total{method="POST",route="/graphql",status="200"}' in text
    assert "aima_graphql_operations_total" in text
    assert "aima_queue_depth" in text
