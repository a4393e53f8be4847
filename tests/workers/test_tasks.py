"""The analysis task function against real servers, with analyzers that succeed, fail, crash and stumble."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import Retry
from pydantic import BaseModel
from sqlalchemy import select

import aima
from aima.analysis import AnalysisInput, Analyzer
from aima.db.models import Case, Job, JobState, Media, Role, Task, TaskState, User
from aima.errors import AimaError, BackendUnavailable, CorruptMedia
from aima.events import JobEventStream
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources
from aima.storage import original_key
from aima.testing.media import make_jpeg
from aima.workers.tasks import run_analysis_task


class Count(BaseModel):
    calls: int


class Scripted(Analyzer):
    """Behaves as the test says: return, raise a domain error, crash, or fail transiently once."""

    version = "0.1"
    result_model = Count

    def __init__(self, name: str, outcome: str) -> None:
        self.name = name  # type: ignore[misc]
        self.outcome = outcome
        self.calls = 0

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        self.calls += 1
        assert item.original_path.read_bytes()[:2] == b"\xff\xd8"
        item.report_progress(0.5, "half way")
        if self.outcome == "corrupt":
            raise CorruptMedia("The file could not be decoded: bad marker.")
        if self.outcome == "crash":
            raise RuntimeError("secret internals")
        if self.outcome == "flaky" and self.calls == 1:
            raise BackendUnavailable("model server down")
        return Count(calls=self.calls)


SCRIPTED = {name: Scripted(name, name) for name in ("ok", "corrupt", "crash", "flaky")}


class ScriptedPlugin:
    @aima.hookimpl
    def register_analyzers(self, register: Any) -> None:
        for analyzer in SCRIPTED.values():
            register(analyzer)


@pytest.fixture(scope="module")
async def scripted(resources: Resources) -> AsyncIterator[Resources]:
    pm = create_plugin_manager(load_external=False)
    pm.register(ScriptedPlugin(), name="scripted")
    yield dataclasses.replace(resources, analyzers=AnalyzerRegistry(pm))


async def new_task(resources: Resources, analyzer: str) -> Task:
    user = User(id=uuid.uuid4(), email=f"w-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="worker", owner_id=user.id)
    media_id = uuid.uuid4()
    image = make_jpeg()

    async def body() -> AsyncIterator[bytes]:
        yield image

    key = original_key(case.id, media_id)
    await resources.store.put_stream(key, body(), content_type="image/jpeg", max_bytes=10**7)
    media = Media(
        id=media_id,
        case_id=case.id,
        uploaded_by=user.id,
        filename="a.jpg",
        kind="image",
        content_type="image/jpeg",
        format="jpeg",
        size_bytes=len(image),
        sha256="0" * 64,
        storage_key=key,
        probe={},
    )
    job = Job(id=uuid.uuid4(), case_id=case.id, media_id=media_id, created_by=user.id)
    task = Task(id=uuid.uuid4(), job_id=job.id, media_id=media_id, analyzer=analyzer, analyzer_version="0.1")
    async with resources.sessions() as session:
        for row in (user, case, media, job, task):  # parents first: there are no relationship()s to order them
            session.add(row)
            await session.flush()
        await session.commit()
    return task


async def reload(resources: Resources, task: Task) -> tuple[Task, Job]:
    async with resources.sessions() as session:
        row = (await session.execute(select(Task, Job).join(Job).where(Task.id == task.id))).one()
        return row.Task, row.Job


def ctx(resources: Resources, job_try: int = 1) -> dict[str, Any]:
    return {"resources": resources, "worker_name": "test-worker", "job_try": job_try}


async def test_success_stores_one_result_and_closes_the_job(scripted: Resources) -> None:
    task = await new_task(scripted, "ok")
    async with JobEventStream(scripted.redis, scripted.settings.redis_prefix, str(task.job_id)) as stream:
        assert await run_analysis_task(ctx(scripted), str(task.id)) == "succeeded"
        events = []
        async with asyncio.timeout(5):
            async for event in stream:
                events.append(event)
                if event.task_id is None:
                    break
    assert [(e.task_state, e.message) for e in events][:2] == [("running", "ok started"), ("running", "half way")]
    assert events[-1].job_state == "succeeded"
    stored, job = await reload(scripted, task)
    assert (stored.state, stored.attempts, stored.worker, job.state) == (
        TaskState.SUCCEEDED,
        1,
        "test-worker",
        JobState.SUCCEEDED,
    )
    assert await scripted.results.count_documents({"media_id": str(task.media_id), "analyzer": "ok"}) == 1


async def test_a_duplicate_delivery_is_skipped(scripted: Resources) -> None:
    task = await new_task(scripted, "ok")
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "succeeded"
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "skipped"
    assert await run_analysis_task(ctx(scripted), str(uuid.uuid4())) == "skipped"
    assert await scripted.results.count_documents({"media_id": str(task.media_id)}) == 1


async def test_a_domain_error_fails_the_task_with_its_code(scripted: Resources) -> None:
    task = await new_task(scripted, "corrupt")
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "failed"
    stored, job = await reload(scripted, task)
    assert (stored.state, stored.error_code, job.state) == (TaskState.FAILED, "CORRUPT_MEDIA", JobState.FAILED)
    assert stored.error_message == "The file could not be decoded: bad marker."
    assert await scripted.results.count_documents({"media_id": str(task.media_id)}) == 0


async def test_a_crash_is_masked_and_logged(scripted: Resources, caplog: pytest.LogCaptureFixture) -> None:
    task = await new_task(scripted, "crash")
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "failed"
    stored, _ = await reload(scripted, task)
    assert stored.error_code == "ANALYZER_CRASHED"
    assert "secret" not in (stored.error_message or "")
    assert "secret internals" in caplog.text


async def test_a_transient_error_is_retried(scripted: Resources) -> None:
    task = await new_task(scripted, "flaky")
    with pytest.raises(Retry):
        await run_analysis_task(ctx(scripted, job_try=1), str(task.id))
    stored, _ = await reload(scripted, task)
    assert (stored.state, stored.error_code) == (TaskState.QUEUED, "BACKEND_UNAVAILABLE")
    assert await run_analysis_task(ctx(scripted, job_try=2), str(task.id)) == "succeeded"
    stored, job = await reload(scripted, task)
    assert (stored.state, stored.attempts, job.state) == (TaskState.SUCCEEDED, 2, JobState.SUCCEEDED)


async def test_deleted_media_fails_the_task(scripted: Resources) -> None:
    task = await new_task(scripted, "ok")
    async with scripted.sessions() as session:
        job = await session.get(Job, task.job_id)
        assert job is not None
        job.media_id = None
        await session.flush()
        media = await session.get(Media, task.media_id)
        await session.delete(media)
        await session.commit()
    # The task went with its media (ON DELETE CASCADE): a late delivery finds nothing to do.
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "skipped"


def test_errors_reach_the_task_record_with_stable_codes() -> None:
    assert CorruptMedia("x").code == "CORRUPT_MEDIA"
    assert BackendUnavailable("x").transient and not AimaError("x").transient
