"""Pipeline benchmark: 200 small media through `media-probe`, with the API and two worker processes.

Starts its own embedded servers (PostgreSQL, MongoDB-wire, Milvus Lite, S3, Redis) in a temporary folder, the API
and two `aima worker` processes, then measures over GraphQL:

- throughput: every media analysed at once (the client keeps up to --concurrency requests in flight);
- latency: media analysed one at a time on idle workers, from sending `analyzeMedia` to the task's stored result.

Completion is seen on the job events in Redis (what the API's subscriptions relay), so waiting adds no load to the
API; the times come from the tasks' own records.

Run: .venv/bin/python bench/pipeline.py [--media 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.cli import create_account
from aima.db.models import Role
from aima.events import JobEvent, job_channel
from aima.settings import Settings
from aima.testing.media import make_jpeg
from aima.testing.stack import local_aima

EMAIL, PASSWORD = "bench@example.org", "benchmark password"
ANALYZE = 'mutation($m: ID!) { analyzeMedia(mediaId: $m, analyzers: ["media-probe"]) { id } }'
JOB = "query($j: ID!) { job(id: $j) { state tasks { finishedAt startedAt } } }"


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = await client.post("/graphql", json={"query": query, "variables": variables or {}})
    body: dict[str, Any] = answer.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def upload(client: httpx.AsyncClient, case_id: str, content: bytes) -> str:
    operations = {
        "query": "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id } }",
        "variables": {"c": case_id, "f": None},
    }
    answer = await client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
        files={"0": ("m.jpg", content, "image/jpeg")},
    )
    body = answer.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    media_id: str = body["data"]["uploadMedia"]["id"]
    return media_id


class JobEnds:
    """Watches every job's events on Redis, as the API's subscriptions do, without adding load to the API."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._pattern = job_channel(prefix, "*")
        self._ended: dict[str, str] = {}
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> JobEnds:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.psubscribe(self._pattern)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self._pubsub.aclose()
        await self._redis.aclose()

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] != "pmessage":
                continue
            event = JobEvent.from_json(message["data"])
            if event.task_id is None and event.job_state in {"succeeded", "failed", "cancelled"}:
                async with self._changed:
                    self._ended[event.job_id] = event.job_state
                    self._changed.notify_all()

    async def wait(self, job_ids: list[str], timeout_s: float = 300) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: all(j in self._ended for j in job_ids))
        unsuccessful = [j for j in job_ids if self._ended[j] != "succeeded"]
        if unsuccessful:
            raise RuntimeError(f"{len(unsuccessful)} jobs did not succeed")


async def task_times(client: httpx.AsyncClient, job_id: str) -> tuple[float, float]:
    """When the job's task started and finished (server clock, the same machine's)."""
    task = (await gql(client, JOB, {"j": job_id}))["job"]["tasks"][0]
    return datetime.fromisoformat(task["startedAt"]).timestamp(), datetime.fromisoformat(task["finishedAt"]).timestamp()


async def run(base_url: str, ends: JobEnds, media_count: int, concurrency: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        login = await gql(
            client,
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            {"e": EMAIL, "p": PASSWORD},
        )
        client.headers["Authorization"] = f"Bearer {login['login']['accessToken']}"

        async def analyse_batch(title: str, media_total: int, parallel: int) -> tuple[list[float], float]:
            case_id = (await gql(client, "mutation($t: String!) { createCase(title: $t) { id } }", {"t": title}))[
                "createCase"
            ]["id"]
            media_ids = [
                await upload(client, case_id, make_jpeg(width=64 + i % 32, height=48)) for i in range(media_total)
            ]
            limiter = asyncio.Semaphore(parallel)
            sent: dict[str, float] = {}
            answered: dict[str, float] = {}

            async def analyse(media_id: str) -> None:
                async with limiter:
                    started = time.time()
                    job_id = (await gql(client, ANALYZE, {"m": media_id}))["analyzeMedia"]["id"]
                    sent[job_id] = started
                    answered[job_id] = time.time()
                    if parallel == 1:  # latency mode: wait for this one before sending the next
                        await ends.wait([job_id], timeout_s=60)

            begin = time.time()
            await asyncio.gather(*(analyse(m) for m in media_ids))
            await ends.wait(list(sent))
            times = {job_id: await task_times(client, job_id) for job_id in sent}
            latencies = [times[j][1] - sent[j] for j in sent]
            to_start = sorted((times[j][0] - sent[j]) * 1000 for j in sent)
            running = sorted((times[j][1] - times[j][0]) * 1000 for j in sent)
            request = statistics.median((answered[j] - sent[j]) * 1000 for j in sent)
            print(
                f"  [{title}] analyzeMedia answered after {request:.1f} ms (median), "
                f"send->start median {statistics.median(to_start):.1f} ms, "
                f"start->stored median {statistics.median(running):.1f} ms"
            )
            return latencies, max(t[1] for t in times.values()) - begin

        _, elapsed = await analyse_batch("throughput", media_count, concurrency)
        latencies, _ = await analyse_batch("latency", max(20, media_count // 4), 1)
        latencies_ms = sorted(x * 1000 for x in latencies)
        return {
            "tasks": media_count,
            "tasks_per_s": media_count / elapsed,
            "latency_median_ms": statistics.median(latencies_ms),
            "latency_p95_ms": latencies_ms[int(0.95 * (len(latencies_ms) - 1))],
            "latency_samples": len(latencies_ms),
        }


async def measure(settings: Settings, base_url: str, media_count: int, concurrency: int) -> dict[str, float]:
    async with JobEnds(settings.redis_url, settings.redis_prefix) as ends:
        return await run(base_url, ends, media_count, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with local_aima("aima-bench-") as aima:
        asyncio.run(create_account(aima.settings, EMAIL, PASSWORD, Role.USER))
        aima.start_workers(args.workers)
        base_url, _ = aima.start_api()
        figures = uvloop.run(measure(aima.settings, base_url, args.media, args.concurrency))
    print(f"media-probe pipeline, API + {args.workers} workers, {args.media} media")
    print(f"  throughput: {figures['tasks_per_s']:.1f} tasks/s")
    print(
        f"  analyzeMedia -> stored result (idle, {figures['latency_samples']:.0f} samples): "
        f"median {figures['latency_median_ms']:.1f} ms, p95 {figures['latency_p95_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
