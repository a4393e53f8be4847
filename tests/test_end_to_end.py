"""The API and a worker as separate processes: upload an image and a video, subscribe over a real websocket,
wait for the jobs to finish and read the results."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from aima.testing.media import make_jpeg, make_mp4
from aima.testing.processes import free_port, spawn, stop, wait_ready
from tests.conftest import Servers, settings_for
from tests.gql import run_sync

pytestmark = pytest.mark.e2e

SUBSCRIBE = """
subscription($id: ID!) {
  jobEvents(jobId: $id) { jobState taskState analyzer progress message tasks { analyzer state } }
}
"""


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    body: dict[str, Any] = answer.json()
    assert not body.get("errors"), body
    data: dict[str, Any] = body["data"]
    return data


async def upload(client: httpx.AsyncClient, token: str, case_id: str, name: str, content: bytes) -> dict[str, Any]:
    operations = {
        "query": "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id kind } }",
        "variables": {"c": case_id, "f": None},
    }
    answer = await client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
        files={"0": (name, content, "application/octet-stream")},
        headers={"Authorization": f"Bearer {token}"},
    )
    body: dict[str, Any] = answer.json()
    assert not body.get("errors"), body
    media: dict[str, Any] = body["data"]["uploadMedia"]
    return media


async def follow(ws_url: str, token: str, job_id: str) -> list[dict[str, Any]]:
    events = []
    async with websockets.connect(
        ws_url,
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        origin="http://127.0.0.1:8000",
    ) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(
            json.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"id": job_id}}})
        )
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "complete":
                return events
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            events.append(message["payload"]["data"]["jobEvents"])


async def scenario(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        token = (
            await gql(
                client,
                'mutation { register(email: "e2e@example.org", password: "end to end password") '
                "{ session { accessToken } } }",
            )
        )["register"]["session"]["accessToken"]
        case_id = (await gql(client, 'mutation { createCase(title: "End to end") { id } }', token=token))["createCase"][
            "id"
        ]
        image = await upload(client, token, case_id, "photo.jpg", make_jpeg(width=120, height=80, exif=True))
        video = await upload(client, token, case_id, "clip.mp4", make_mp4(seconds=1.0, width=160, height=120))
        assert (image["kind"], video["kind"]) == ("IMAGE", "VIDEO")

        ws_url = base_url.replace("http://", "ws://") + "/graphql"
        for media in (image, video):
            job = (
                await gql(
                    client,
                    'mutation($m: ID!) { analyzeMedia(mediaId: $m, analyzers: ["media-probe"]) { id } }',
                    {"m": media["id"]},
                    token,
                )
            )["analyzeMedia"]
            events = await follow(ws_url, token, job["id"])
            assert events[-1]["jobState"] == "SUCCEEDED", events
            # The task's end arrives live, or, when the job was done before the subscription began, in the
            # first event's snapshot of every task.
            # A job may hold more tasks than the one asked for (a video's thumbnail), so only media-probe's counts.
            live = any(e["taskState"] == "SUCCEEDED" and e["analyzer"] == "media-probe" for e in events)
            snapshot = {t["analyzer"]: t["state"] for t in events[0]["tasks"]}
            assert live or snapshot.get("media-probe") == "SUCCEEDED", events

        read = await gql(
            client,
            "query($i: ID!, $v: ID!) { i: media(id: $i) { results { analyzer payload } }"
            " v: media(id: $v) { results { analyzer payload } } }",
            {"i": image["id"], "v": video["id"]},
            token,
        )
        [image_result] = read["i"]["results"]
        [video_result] = read["v"]["results"]
        assert image_result["payload"]["width"] == 120
        assert video_result["payload"]["kind"] == "video"
        assert {s["type"] for s in video_result["payload"]["streams"]} == {"video", "audio"}


def test_upload_analyze_subscribe_read_across_processes(servers: Servers, tmp_path: Path) -> None:
    settings = settings_for(servers)
    port = free_port()
    api = spawn(["api", "--port", str(port)], settings, tmp_path / "api.log")
    worker = spawn(["worker"], settings, tmp_path / "worker.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", api, timeout=60)
        run_sync(scenario(f"http://127.0.0.1:{port}"))
    finally:
        codes = (stop(api), stop(worker))
        logs = {p.name: p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log")}
    whole = (tmp_path / "worker.log").read_text(errors="replace")
    # Whatever is not an info line (tracebacks, warnings, errors) says why a process did not end cleanly.
    unusual = [line for line in whole.splitlines() if '"level": "info"' not in line]
    assert codes == (0, 0), {"worker (not info)": "\n".join(unusual[-60:]), **logs}
    worker_log = [json.loads(line) for line in whole.splitlines() if line.startswith("{")]
    assert any(entry.get("task_id") and entry.get("job_id") for entry in worker_log), logs["worker.log"]
