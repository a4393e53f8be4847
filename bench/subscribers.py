"""Live progress benchmark: many websocket subscribers to one job, and how long an event takes to reach them.

Starts its own embedded servers and one API process (no worker: the job stays queued, so the only events are the
benchmark's), opens --subscribers graphql-transport-ws connections, each subscribed to `jobEvents` of the same job,
then publishes --events events as a worker does (`aima.events.publish`), one every --interval seconds (a running task
reports progress at most every 0.5 s), and prints the median, p99 and largest delay from the start of each
publication to the event's arrival at each subscriber. Both ends run in this process, on one clock; the figure
includes the subscribers' own reading (all of them in one process). The subscribers offer permessage-deflate, as
browsers do; --no-deflate leaves it out.

Run: .venv/bin/python bench/subscribers.py [--subscribers 500] [--events 40] [--interval 0.5] [--no-deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.cli import create_account
from aima.db.models import Role
from aima.events import JobEvent, publish
from aima.settings import Settings
from aima.testing.media import make_jpeg
from aima.testing.stack import local_aima

EMAIL, PASSWORD = "bench@example.org", "benchmark password"
SUBSCRIBE = "subscription($j: ID!) { jobEvents(jobId: $j) { seq taskState progress etaS message } }"


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = (await client.post("/graphql", json={"query": query, "variables": variables or {}})).json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def queued_job(client: httpx.AsyncClient) -> tuple[str, str, str]:
    """A case, a media item and a job of it that no worker takes; returns the job's, its case's and a task's ids."""
    case_id = (await gql(client, 'mutation { createCase(title: "Subscribers") { id } }'))["createCase"]["id"]
    operations = {
        "query": "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id } }",
        "variables": {"c": case_id, "f": None},
    }
    answer = await client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
        files={"0": ("m.jpg", make_jpeg(), "image/jpeg")},
    )
    media_id = answer.json()["data"]["uploadMedia"]["id"]
    job = (
        await gql(
            client,
            'mutation($m: ID!) { analyzeMedia(mediaId: $m, analyzers: ["media-probe"]) { id tasks { id } } }',
            {"m": media_id},
        )
    )["analyzeMedia"]
    return job["id"], case_id, job["tasks"][-1]["id"]


class Subscriber:
    """One websocket connection following the job; records when each numbered event arrived."""

    def __init__(self, url: str, token: str, job_id: str, *, deflate: bool) -> None:
        self.url, self.token, self.job_id, self.deflate = url, token, job_id, deflate
        self.arrived: dict[int, float] = {}
        self.ready = asyncio.Event()

    async def run(self, opened: asyncio.Semaphore, expected: int) -> None:
        async with opened:
            ws = await connect(
                self.url,
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                open_timeout=60,
                max_queue=None,
                compression="deflate" if self.deflate else None,
            )
        async with ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {self.token}"}}))
            if json.loads(await ws.recv())["type"] != "connection_ack":
                raise RuntimeError("connection refused")
            await ws.send(
                json.dumps(
                    {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"j": self.job_id}}}
                )
            )
            await self._read(ws, expected)

    async def _read(self, ws: ClientConnection, expected: int) -> None:
        start_seq = None
        while True:
            message = json.loads(await ws.recv())
            now = time.perf_counter()
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
                continue
            if message["type"] != "next":
                raise RuntimeError(f"unexpected message {message}")
            seq = message["payload"]["data"]["jobEvents"]["seq"]
            if start_seq is None:  # the snapshot
                start_seq = seq
                self.ready.set()
                continue
            self.arrived[seq] = now
            if len(self.arrived) == expected:
                return


async def measure(
    settings: Settings, base_url: str, subscribers: int, events: int, interval: float, *, deflate: bool
) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        login = await gql(
            client,
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            {"e": EMAIL, "p": PASSWORD},
        )
        token = login["login"]["accessToken"]
        client.headers["Authorization"] = f"Bearer {token}"
        job_id, case_id, task_id = await queued_job(client)

    ws_url = base_url.replace("http://", "ws://") + "/graphql"
    followers = [Subscriber(ws_url, token, job_id, deflate=deflate) for _ in range(subscribers)]
    opened = asyncio.Semaphore(50)
    started = time.perf_counter()
    runs = [asyncio.create_task(f.run(opened, events)) for f in followers]
    ready: asyncio.Future[Any] = asyncio.gather(*(f.ready.wait() for f in followers))
    waiting: list[asyncio.Future[Any]] = [ready, *runs]
    await asyncio.wait(waiting, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        failed = [r.exception() for r in runs if r.done()]
        raise RuntimeError(f"subscribers did not start: {failed[:3]}")
    print(f"  {subscribers} subscribers connected and had the job's state after {time.perf_counter() - started:.1f} s")

    sent: dict[int, float] = {}
    redis = Redis.from_url(settings.redis_url)
    try:
        for n in range(events):
            event = JobEvent(
                job_id=job_id,
                job_state="running",
                task_id=task_id,
                analyzer="media-probe",
                task_state="running",
                progress=(n + 1) / (events + 1),
                message=f"step {n}",
                case_id=case_id,
            )
            at = time.perf_counter()
            seq = await publish(redis, settings.redis_prefix, event)
            sent[seq] = at
            await asyncio.sleep(interval)
    finally:
        await redis.aclose()
    done, pending = await asyncio.wait(runs, timeout=60)
    for run in pending:
        run.cancel()
    errors = [r.exception() for r in done if r.exception() is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} subscribers failed: {errors[:3]}")
    delays = sorted((arrived - sent[seq]) * 1000 for f in followers for seq, arrived in f.arrived.items())
    missing = subscribers * events - len(delays)
    return {
        "median_ms": statistics.median(delays),
        "p99_ms": delays[int(0.99 * (len(delays) - 1))],
        "max_ms": delays[-1],
        "deliveries": len(delays),
        "missing": missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two events")
    parser.add_argument("--no-deflate", action="store_true", help="subscribers do not offer permessage-deflate")
    args = parser.parse_args()

    with local_aima("aima-bench-subscribers-") as aima:
        asyncio.run(create_account(aima.settings, EMAIL, PASSWORD, Role.USER))
        base_url, _ = aima.start_api()
        print(
            f"live progress: one API process, {args.subscribers} websocket subscribers to one job, "
            f"{args.events} events {args.interval * 1000:.0f} ms apart, "
            f"permessage-deflate {'not offered' if args.no_deflate else 'offered'}"
        )
        figures = uvloop.run(
            measure(aima.settings, base_url, args.subscribers, args.events, args.interval, deflate=not args.no_deflate)
        )
    print(
        f"  publication -> arrival over {figures['deliveries']:.0f} deliveries ({figures['missing']:.0f} missing): "
        f"median {figures['median_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, max {figures['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
