"""Readiness names each configured model endpoint (``model:<endpoint>``); one that is down makes the API "degraded",
not unready: the API needs no model (tasks wait for theirs, and a dossier names what it had to do without)."""

from __future__ import annotations

from starlette.testclient import TestClient

from aima.app import create_app
from aima.plugins import AnalyzerRegistry
from aima.testing.model_server import ModelServer
from aima.testing.processes import free_port
from tests.conftest import Servers, settings_for

BACKENDS = ("postgresql", "mongodb", "milvus", "s3", "redis")


def test_readyz_reports_each_model_endpoint_without_failing_on_it(
    servers: Servers, analyzers: AnalyzerRegistry
) -> None:
    with ModelServer() as llava:
        endpoints = {
            "llava": {"url": llava.url, "protocol": "tgi", "model": llava.model},
            "llama": {"url": f"http://127.0.0.1:{free_port()}", "protocol": "openai", "model": "llama"},
        }
        settings = settings_for(servers, inference={"endpoints": endpoints}, readiness_timeout_s=2.0)
        with TestClient(create_app(settings, analyzers=analyzers)) as http:
            answer = http.get("/readyz")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "degraded"
            assert body["checks"] == {**{name: "ok" for name in BACKENDS}, "model:llava": "ok", "model:llama": "down"}

            llava.healthy = False
            body = http.get("/readyz").json()
            assert (body["status"], body["checks"]["model:llava"]) == ("degraded", "down")


def test_readyz_is_ready_when_every_model_answers(servers: Servers, analyzers: AnalyzerRegistry) -> None:
    with ModelServer() as llava:
        endpoints = {"llava": {"url": llava.url, "protocol": "openai", "model": llava.model}}
        settings = settings_for(servers, inference={"endpoints": endpoints})
        with TestClient(create_app(settings, analyzers=analyzers)) as http:
            answer = http.get("/readyz")
            assert answer.status_code == 200 and answer.json()["status"] == "ready"
            assert answer.json()["checks"]["model:llava"] == "ok"
