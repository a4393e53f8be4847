"""What the tests of the job machinery share: the test analyzers, cases of media to analyse, and ways to wait."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from aima import queues
from aima.db.models import Case, Job, JobState, Media, Priority, Role, Task, User
from aima.events import EventLog, JobEvent, events_after, wake_channel
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources
from aima.services import jobs
from aima.services.access import Actor
from aima.settings import Settings
from aima.testing.analyzers import ENDPOINT, ENDPOINT_ENV
from aima.testing.workers import test_analyzer_registry
from tests.conftest import Servers, settings_for, worker_thread


def registry_with_test_analyzers() -> AnalyzerRegistry:
    """The built-in analyzers and the test ones (noop, sleeper, remote-model)."""
    return test_analyzer_registry()


def with_test_analyzers(resources: Resources) -> Resources:
    return dataclasses.replace(resources, analyzers=registry_with_test_analyzers())


@dataclass(frozen=True)
class SampleCase:
    actor: Actor
    case_id: uuid.UUID
    media_ids: list[uuid.UUID]


async def new_case(resources: Resources, media: int = 1) -> SampleCase:
    """A user owning a case of `media` audio items (rows only: the test analyzers read no file, and audio gets no
    preview, so a job over them has no preparation tasks)."""
    user = User(id=uuid.uuid4(), email=f"jobs-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="jobs", owner_id=user.id)
    rows = [
        Media(
            id=uuid.uuid4(),
            case_id=case.id,
            uploaded_by=user.id,
            filename=f"{i}.wav",
            kind="audio",
            content_type="audio/wav",
            format="wav",
            size_bytes=4,
            sha256=hashlib.sha256(str(i).encode()).hexdigest(),
            storage_key=f"test/{uuid.uuid4()}",
            probe={},
        )
        for i in range(media)
    ]
    async with resources.sessions() as session:
        session.add(user)
        await session.flush()
        session.add(case)
        await session.flush()
        session.add_all(rows)
        await session.commit()
    return SampleCase(Actor(user_id=user.id, email=user.email, role=Role.USER), case.id, [m.id for m in rows])


async def analyze(
    resources: Resources, case: SampleCase, analyzers: list[str], priority: Priority = Priority.NORMAL
) -> uuid.UUID:
    """A job of these analyzers over every media item of the case (`resources` must know them)."""
    job = await jobs.analyze_case(
        resources=resources, actor=case.actor, case_id=case.case_id, analyzers=analyzers, priority=priority
    )
    return job.id


async def job_tasks(resources: Resources, job_id: uuid.UUID) -> list[Task]:
    async with resources.sessions() as session:
        query = select(Task).where(Task.job_id == job_id).order_by(Task.created_at, Task.id)
        return list((await session.execute(query)).scalars())


async def job_row(resources: Resources, job_id: uuid.UUID) -> Job:
    async with resources.sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def eventually(check: Callable[[], Any], within_s: float, what: str, every_s: float = 0.05) -> Any:
    """Await `check()` (sync or async) until it returns something truthy; that value."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(every_s)


async def job_ends(resources: Resources, job_id: uuid.UUID, within_s: float) -> JobState:
    async def ended() -> JobState | None:
        state = (await job_row(resources, job_id)).state
        return state if state.terminal else None

    state: JobState = await eventually(ended, within_s, f"job {job_id} ends", every_s=0.1)
    return state


async def results_of(resources: Resources, case: SampleCase) -> list[dict[str, Any]]:
    media = [str(m) for m in case.media_ids]
    return [doc async for doc in resources.results.find({"media_id": {"$in": media}})]


def resource_worker(settings: Settings, resource: str, **overrides: Any) -> dict[str, Any]:
    """`worker_thread` overrides for a worker on `resource`'s queue, without periodic jobs."""
    queue = queues.queue_name(settings, resource)
    return {
        "queue_name": queue,
        "wake_channel": wake_channel(settings.redis_prefix, queue),
        "cron_jobs": [],
        **overrides,
    }


async def job_events(resources: Resources, job_id: uuid.UUID) -> list[JobEvent]:
    """Every event of the job so far, as kept in its stream."""
    log = EventLog.of_job(resources.settings.redis_prefix, str(job_id))
    found: list[JobEvent] = []
    while batch := await events_after(resources.redis, log, (found[-1].seq or 0) if found else 0):
        found.extend(batch)
    return found


class ModelEndpoint:
    """A small HTTP server standing in for a model endpoint: answers `failing_status` while `failing()` says so,
    then 200. Counts the requests."""

    def __init__(self, failing: Callable[[], bool], failing_status: int = 503) -> None:
        self.failing = failing
        self.failing_status = failing_status
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                endpoint.requests += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                status = endpoint.failing_status if endpoint.failing() else 200
                body = b'{"answer": "a cat"}' if status == 200 else b'{"error": "busy"}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/generate"

    @contextlib.contextmanager
    def serving(self) -> Iterator[ModelEndpoint]:
        thread = threading.Thread(target=self._server.serve_forever, name="model-endpoint", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)


@contextlib.contextmanager
def endpoint_worker(settings: Settings, url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker in a thread on the model endpoint's queue, and ``remote-model`` posting to `url` (the test's endpoint,
    or one where nothing listens) while it runs."""
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), **resource_worker(settings, ENDPOINT)):
        monkeypatch.setenv(ENDPOINT_ENV, url)
        yield


def job_settings(servers: Servers, *, database_url: str | None = None, **worker: Any) -> Settings:
    """A test's own settings (key prefix, queues), with these worker settings, and its own database if given."""
    base = settings_for(servers)
    update: dict[str, Any] = {"worker": base.worker.model_copy(update=worker)}
    if database_url is not None:
        update["database_url"] = database_url
    return base.model_copy(update=update)
