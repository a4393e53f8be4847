"""Readiness tells which backend is down, and the API keeps answering."""

from __future__ import annotations

from starlette.testclient import TestClient

from aima.app import create_app
from aima.embedded import EmbeddedMongo
from aima.embedded.base import make_runtime_root
from aima.plugins import AnalyzerRegistry
from tests.conftest import Servers, settings_for


def test_readyz_reports_the_backend_that_is_down(servers: Servers, analyzers: AnalyzerRegistry) -> None:
    from aima.embedded import StackPorts

    root = make_runtime_root("aima-mongo-down-")
    mongo = EmbeddedMongo(root / "mongo", StackPorts.free().mongo)
    mongo.start()
    settings = settings_for(servers, mongo_url=mongo.url, readiness_timeout_s=1.0)
    try:
        with TestClient(create_app(settings, analyzers=analyzers)) as http:
            assert http.get("/readyz").status_code == 200
            mongo.stop()
            answer = http.get("/readyz")
            assert answer.status_code == 503
            checks = answer.json()["checks"]
            assert checks["mongodb"].startswith("down")
            assert checks["postgresql"] == checks["redis"] == checks["s3"] == checks["milvus"] == "ok"
            assert http.get("/healthz").status_code == 200
    finally:
        mongo.stop()
