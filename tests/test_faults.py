"""Fault tests with real `aima worker` processes and real servers (issue 5):

- a worker killed with SIGKILL in the middle of a task: the task runs again on another worker, and the case ends
  with exactly one result per (media, analyzer);
- Redis restarting (and losing its data) while a case is analysed: the workers carry on, the reconciler rebuilds
  the queues from PostgreSQL, events flow again, a live `jobEvents` subscription of an API follows the job to its
  end, and the case completes;
- a model endpoint that answers 503 for 20 s, then works: the task waits for the model (recorded, and announced),
  then succeeds. Its 20 s run while the other tests of this module do, so they cost no extra time;
- cancelling a case being analysed by real workers stops it within 2 s.

Each deployment (a database, a Redis key prefix, its worker processes) is this module's own: reconcilers take every
task of their database.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from redis.exceptions import RedisError
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import JobState, Role, TaskState
from aima.embedded.redis import EmbeddedRedis
from aima.events import JobEvent
from aima.resources import Resources, open_resources
from aima.services import task_runs
from aima.settings import Settings
from aima.testing.analyzers import ENDPOINT, ENDPOINT_ENV, SLEEP_ENV
from aima.testing.processes import free_port, stop
from aima.testing.workers import spawn_worker
from tests.conftest import Servers
from tests.gql import PASSWORD, login
from tests.isolation import fresh_database
from tests.workers.jobs import (
    ModelEndpoint,
    SampleCase,
    analyze,
    eventually,
    job_ends,
    job_events,
    job_settings,
    job_tasks,
    new_case,
    registry_with_test_analyzers,
)

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

OUTAGE_S = 20.0
#: Quick to notice a vanished worker: heartbeats every 0.5 s, stale after 3 s, the reconciler every second.
WORKER = {
    "heartbeat_s": 0.5,
    "heartbeat_timeout_s": 3.0,
    "reconcile_interval_s": 1,
    "max_jobs": 1,
    "retry_base_s": 1.0,
    "retry_cap_s": 4.0,
    "max_tries": 40,
}


@dataclass
class Deployment:
    settings: Settings
    resources: Resources
    logs: Path
    workers: list[Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, *, resources: tuple[str, ...] = ("cpu",), **env: str) -> Popen[bytes]:
        worker = spawn_worker(self.settings, self.logs / f"{name}.log", resources=resources, **env)
        self.workers.append(worker)
        return worker

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
async def deployment(servers: Servers, database_url: str, logs: Path) -> AsyncIterator[Deployment]:
    settings = job_settings(servers, database_url=database_url, **WORKER)
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        deployed = Deployment(settings, resources, logs)
        try:
            yield deployed
        finally:
            codes = [stop(worker) for worker in deployed.workers]
            logger.info("workers stopped with %s", codes)


@dataclass
class Outage:
    job_id: uuid.UUID
    case: SampleCase
    began: float
    states: set[TaskState]
    watcher: asyncio.Task[None]


@pytest.fixture(scope="module")
async def outage(deployment: Deployment) -> AsyncIterator[Outage]:
    """A model endpoint down (503) for 20 s from now, a worker of that endpoint, and a task for it; the states its
    task goes through are watched in the background while the other tests run."""
    began = [0.0]
    endpoint = ModelEndpoint(lambda: time.monotonic() < began[0] + OUTAGE_S)
    with endpoint.serving():
        deployment.spawn("endpoint-worker", resources=(ENDPOINT,), **{ENDPOINT_ENV: endpoint.url})
        case = await new_case(deployment.resources)
        began[0] = time.monotonic()
        job_id = await analyze(deployment.resources, case, ["remote-model"])
        states: set[TaskState] = set()

        async def watch() -> None:
            while True:
                states.update(t.state for t in await job_tasks(deployment.resources, job_id))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        try:
            yield Outage(job_id, case, began[0], states, watcher)
        finally:
            watcher.cancel()


def worker_pid(task_worker: str | None) -> int:
    assert task_worker is not None
    return int(task_worker.rsplit(":", 1)[1])


async def one_result_per_media(resources: Resources, case: SampleCase, analyzer: str) -> list[dict[str, object]]:
    documents = [
        doc
        async for doc in resources.results.find(
            {"media_id": {"$in": [str(m) for m in case.media_ids]}, "analyzer": analyzer}
        )
    ]
    assert sorted(doc["media_id"] for doc in documents) == sorted(str(m) for m in case.media_ids)
    return documents


async def test_a_worker_killed_in_the_middle_of_a_task(deployment: Deployment, outage: Outage) -> None:
    resources = deployment.resources
    first = deployment.spawn("cpu-1", **{SLEEP_ENV: "2"})
    second = deployment.spawn("cpu-2", **{SLEEP_ENV: "2"})
    case = await new_case(resources, media=3)
    job_id = await analyze(resources, case, ["sleeper"])

    async def running() -> list[object]:
        return [t for t in await job_tasks(resources, job_id) if t.state is TaskState.RUNNING]

    [victim, *_] = await eventually(running, 60, "a task runs")
    victim_pid = worker_pid(victim.worker)
    assert victim_pid in (first.pid, second.pid)
    survivor = second if victim_pid == first.pid else first
    await asyncio.sleep(0.5)  # in the middle of its 2 s
    os.kill(victim_pid, signal.SIGKILL)
    killed = time.monotonic()

    assert await job_ends(resources, job_id, 60) is JobState.SUCCEEDED
    tasks = {t.id: t for t in await job_tasks(resources, job_id)}
    again = tasks[victim.id]
    assert again.attempts == 2 and worker_pid(again.worker) == survivor.pid
    assert {t.state for t in tasks.values()} == {TaskState.SUCCEEDED}
    documents = await one_result_per_media(resources, case, "sleeper")
    assert {doc["payload"]["pid"] for doc in documents if doc["media_id"] == str(victim.media_id)} == {survivor.pid}
    assert again.started_at is not None
    logger.info(
        "killed worker's task ran again %.1f s after the kill (heartbeat timeout %.0f s)",
        again.started_at.timestamp() - (time.time() - (time.monotonic() - killed)),
        deployment.settings.worker.heartbeat_timeout_s,
    )
    assert survivor.poll() is None
    deployment.workers.remove(first if survivor is second else second)


async def test_cancelling_a_case_on_real_workers(deployment: Deployment, outage: Outage) -> None:
    resources = deployment.resources
    case = await new_case(resources, media=4)
    job_id = await analyze(resources, case, ["sleeper"])  # the surviving worker: 2 s each, one at a time

    async def running() -> bool:
        return any(t.state is TaskState.RUNNING for t in await job_tasks(resources, job_id))

    await eventually(running, 30, "a task runs")
    asked = time.monotonic()
    outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert outcome is not None and outcome.stopping == 1 and len(outcome.cancelled) == 3
    assert await job_ends(resources, job_id, 2.0) is JobState.CANCELLED
    logger.info("a running task of a real worker was cancelled in %.3f s", time.monotonic() - asked)
    assert {t.state for t in await job_tasks(resources, job_id)} == {TaskState.CANCELLED}
    await asyncio.sleep(0.3)
    assert await resources.results.count_documents({"media_id": {"$in": [str(m) for m in case.media_ids]}}) == 0


@pytest.fixture
def redis_server(logs: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to restart (the machine's must stay up for everything else)."""
    server = EmbeddedRedis(logs / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def another_database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def test_redis_restarting_while_a_case_is_analysed(
    servers: Servers, redis_server: EmbeddedRedis, another_database_url: str, logs: Path, outage: Outage
) -> None:
    settings = job_settings(servers, database_url=another_database_url, **WORKER).model_copy(
        update={"redis_url": redis_server.url}
    )
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        own = Deployment(settings, resources, logs / "redis-restart")
        try:
            workers = [own.spawn(f"cpu-{i}", **{SLEEP_ENV: "0.5"}) for i in (1, 2)]
            case = await new_case(resources, media=8)
            job_id = await analyze(resources, case, ["sleeper"])

            async def some_done() -> bool:
                return any(t.state is TaskState.SUCCEEDED for t in await job_tasks(resources, job_id))

            await eventually(some_done, 60, "the analysis is under way")
            follower = LiveFollower(settings, job_id)
            follower.start()
            await eventually(follower.following, 30, "the subscription sent the job's state")
            # Redis goes down and comes back empty (a restart without persistence).
            redis_server.stop()
            (redis_server.data_dir / "dump.rdb").unlink(missing_ok=True)
            await asyncio.sleep(3.0)  # longer than a subscription waits between two session checks
            redis_server.start()
            restarted = time.monotonic()

            assert await job_ends(resources, job_id, 60) is JobState.SUCCEEDED
            ended = time.monotonic()
            logger.info("the case completed %.1f s after Redis came back", ended - restarted)
            # The API's subscription, opened before the restart, follows the job to its end and completes.
            await asyncio.to_thread(follower.join, 20)
            follower.check(after=restarted)
            logger.info("the live subscription ended %.1f s after the job", follower.completed_at - ended)
            assert all(worker.poll() is None for worker in workers)
            await one_result_per_media(resources, case, "sleeper")

            # Events flow again: the job's end reached its (new) stream.
            async def events() -> list[JobEvent]:
                try:
                    return await job_events(resources, job_id)
                except RedisError:  # this process's connections from before the restart
                    return []

            events = await eventually(events, 10, "events after the restart")
            assert events[-1].job_state == JobState.SUCCEEDED and events[-1].task_id is None
        finally:
            codes = [stop(worker) for worker in own.workers]
    assert codes == [0, 0], {name: own.log(name)[-3000:] for name in ("cpu-1", "cpu-2")}
    assert "Redis failed" in own.log("cpu-1") + own.log("cpu-2")


class LiveFollower(threading.Thread):
    """An API of the deployment (its own process's clients) with one `jobEvents` subscription, read in a thread."""

    QUERY = "subscription($j: ID!) { jobEvents(jobId: $j) { seq jobState taskState snapshot resync } }"

    def __init__(self, settings: Settings, job_id: uuid.UUID) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.job_id = job_id
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.completed_at = 0.0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            email = f"follower-{uuid.uuid4().hex[:8]}@example.org"
            asyncio.run(create_account(self.settings, email, PASSWORD, Role.ADMIN))
            with TestClient(create_app(self.settings)) as http:
                client = login(http, email)
                for payload in client.subscribe(self.QUERY, {"j": str(self.job_id)}):
                    self.received.append((time.monotonic(), payload))
            self.completed_at = time.monotonic()
        except BaseException as exc:  # reported by `check`
            self.failure = exc

    async def following(self) -> bool:
        if self.failure is not None:
            raise self.failure
        return bool(self.received)

    def check(self, *, after: float) -> None:
        assert self.failure is None, self.failure
        assert not self.is_alive(), "the subscription did not complete after the job ended"
        payloads = [payload for _, payload in self.received]
        assert all(not p.get("errors") for p in payloads), payloads
        events = [p["data"]["jobEvents"] for p in payloads]
        assert events[0]["snapshot"] and events[-1]["jobState"] == "SUCCEEDED"
        assert any(at > after for at, _ in self.received), "nothing arrived after Redis came back"
        # Numbered without gaps or repeats, except where a snapshot (after the restart: a resync) takes over.
        for before, event in itertools.pairwise(events):
            assert event["snapshot"] or event["seq"] == before["seq"] + 1, events
        received = [(e["seq"], e["taskState"], e["snapshot"], e["resync"]) for e in events]
        logger.info("the subscription received %s", received)


async def test_a_model_endpoint_down_for_20_s(deployment: Deployment, outage: Outage) -> None:
    resources = deployment.resources
    assert await job_ends(resources, outage.job_id, OUTAGE_S + 40) is JobState.SUCCEEDED
    took = time.monotonic() - outage.began
    assert took >= OUTAGE_S
    assert TaskState.WAITING_FOR_MODEL in outage.states
    [task] = await job_tasks(resources, outage.job_id)
    assert task.state is TaskState.SUCCEEDED and task.attempts > 2 and task.error_code is None
    waits = [e for e in await job_events(resources, outage.job_id) if e.task_state == TaskState.WAITING_FOR_MODEL]
    assert len(waits) == task.attempts - 1
    assert waits[0].message.startswith("remote-model waiting for model: test-endpoint answered 503, next try in ")
    await one_result_per_media(resources, outage.case, "remote-model")
    logger.info("the task waited for the model %d times and succeeded after %.1f s", len(waits), took)
