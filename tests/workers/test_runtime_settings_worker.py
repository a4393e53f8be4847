"""A runtime setting changed through the API reaches a running `aima worker` process, and the API, within 2 s.

The API and the worker run as separate processes (what `aima api` and `aima worker` run), on a database of their
own, so that the overrides stored here reach no other test's processes.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from aima.cli import create_account
from aima.db.models import Role
from aima.services.runtime_settings import applied_key
from aima.settings import Settings
from aima.testing.media import make_jpeg
from aima.testing.processes import free_port, spawn, stop, wait_ready
from tests.conftest import Servers, settings_for
from tests.gql import PASSWORD, run_sync
from tests.isolation import fresh_database

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

SET = "mutation($k: String!, $v: JSON!) { setRuntimeSetting(key: $k, value: $v) { version value } }"
RESET = "mutation($k: String!) { resetRuntimeSetting(key: $k) { value } }"
PROCESSES = "{ runtimeSettings { version processes { process version current values } } }"


@pytest.fixture
def own_database(servers: Servers) -> Iterator[Settings]:
    with fresh_database() as url:
        yield settings_for(servers, database_url=url)


class Api:
    def __init__(self, client: httpx.Client, token: str | None = None) -> None:
        self.client = client
        self.token = token

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        answer = self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
        body: dict[str, Any] = answer.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.execute(query, variables)
        assert not body.get("errors"), body
        data: dict[str, Any] = body["data"]
        return data

    def upload(self, case_id: str, content: bytes) -> dict[str, Any]:
        operations = {
            "query": "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id } }",
            "variables": {"c": case_id, "f": None},
        }
        answer = self.client.post(
            "/graphql",
            data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
            files={"0": ("photo.jpg", content, "image/jpeg")},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        body: dict[str, Any] = answer.json()
        return body


def applied(redis: redis_sync.Redis, settings: Settings, process: str) -> dict[str, Any] | None:
    raw = redis.hget(applied_key(settings.redis_prefix), process)
    return json.loads(raw) if raw else None  # type: ignore[arg-type]


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Seconds until `check()` is true."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_change_reaches_a_running_worker_process_within_2_s(own_database: Settings, tmp_path: Path) -> None:
    settings = own_database
    port = free_port()
    api_process = spawn(["api", "--port", str(port)], settings, tmp_path / "api.log")
    worker_process = spawn(["worker"], settings, tmp_path / "worker.log")
    redis = redis_sync.Redis.from_url(settings.redis_url)
    host = socket.gethostname()
    worker_id, api_id = f"worker:{host}:{worker_process.pid}", f"api:{host}:{api_process.pid}"
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", api_process, timeout=60)
        email = f"config-admin-{uuid.uuid4().hex[:6]}@example.org"
        run_sync(create_account(settings, email, PASSWORD, Role.ADMIN))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            admin = Api(client)
            login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
            admin.token = admin.data(login, {"e": email, "p": PASSWORD})["login"]["accessToken"]
            alive(worker_process)
            wait_for(lambda: applied(redis, settings, worker_id) is not None, 60, "the worker reports its version")
            started = applied(redis, settings, worker_id)
            assert started is not None and started["values"]["worker.max_tries"] == settings.worker.max_tries

            sent = time.monotonic()
            version = admin.data(SET, {"k": "worker.max_tries", "v": 7})["setRuntimeSetting"]["version"]
            answered = time.monotonic()

            def worker_applied() -> bool:
                entry = applied(redis, settings, worker_id)
                return entry is not None and entry["version"] >= version and entry["values"]["worker.max_tries"] == 7

            wait_for(worker_applied, 2.0, "the worker applies the change")
            logger.info(
                "worker.max_tries reached the worker %.3f s after the request (%.3f s after the answer)",
                time.monotonic() - sent,
                time.monotonic() - answered,
            )

            # The API process applies changes as well: a smaller upload limit refuses an upload at once.
            case_id = admin.data('mutation { createCase(title: "Limits") { id } }')["createCase"]["id"]
            image = make_jpeg()
            admin.data(SET, {"k": "max_upload_bytes", "v": len(image) - 1})
            wait_for(
                lambda: (
                    admin.upload(case_id, image).get("errors", [{}])[0].get("extensions", {}).get("code")
                    == "FILE_TOO_LARGE"
                ),
                2.0,
                "the API refuses a too large upload",
            )
            report = admin.data(PROCESSES)["runtimeSettings"]
            wait_for(
                lambda: (
                    {p["process"] for p in admin.data(PROCESSES)["runtimeSettings"]["processes"] if p["current"]}
                    >= {worker_id, api_id}
                ),
                2.0,
                "both processes apply the latest version",
            )

            for key in ("worker.max_tries", "max_upload_bytes"):
                admin.data(RESET, {"k": key})

            def worker_reset() -> bool:
                entry = applied(redis, settings, worker_id)
                return entry is not None and entry["values"]["worker.max_tries"] == settings.worker.max_tries

            wait_for(worker_reset, 2.0, "the worker returns to the base value")
            wait_for(lambda: not admin.upload(case_id, image).get("errors"), 2.0, "the API accepts the upload again")
            assert report["version"] >= version + 1
            alive(worker_process)
    finally:
        codes = (stop(api_process), stop(worker_process))
        redis.close()
        logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    assert codes == (0, 0), {name: text[-3000:] for name, text in logs.items()}
    worker_log = [json.loads(line) for line in logs["worker.log"].splitlines() if line.startswith("{")]
    changes = [entry["message"] for entry in worker_log if entry["message"].startswith("configuration version")]
    base = settings.worker.max_tries
    assert any(f"worker.max_tries=7 (was {base})" in message for message in changes), changes
    assert any(f"worker.max_tries={base} (was 7)" in message for message in changes), changes
    for text in logs.values():
        assert settings.s3.secret_key.get_secret_value() not in text
        assert settings.auth.jwt_secret.get_secret_value() not in text
    # A worker that stopped cleanly takes its entry with it.
    assert applied(redis_sync.Redis.from_url(settings.redis_url), settings, worker_id) is None


def alive(process: subprocess.Popen[bytes]) -> None:
    assert process.poll() is None, f"exited with {process.returncode}"
