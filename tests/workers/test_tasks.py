"""The analysis task function against real servers, with analyzers that succeed, fail, crash and stumble."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

import aima
from aima.analysis import AnalysisInput, Analyzer
from aima.db.models import Case, Job, JobState, Media, Role, Task, TaskState, User
from aima.errors import AimaError, BackendUnavailable, CorruptMedia
from aima.events import JobEventStream
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources
from aima.services.task_runs import arq_job_id
from aima.testing.media import make_jpeg
from aima.workers import tasks as tasks_module
from aima.workers.tasks import run_analysis_task
from tests.factories import stored_original


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


async def new_task(resources: Resources, analyzer: str, *more: str, version: str = "0.1") -> Task:
    """A media item with a job of one task per analyzer named; returns the first task."""
    user = User(id=uuid.uuid4(), email=f"w-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="worker", owner_id=user.id)
    media = await stored_original(resources, make_jpeg(), case_id=case.id, uploaded_by=user.id)
    media_id = media.id
    job = Job(id=uuid.uuid4(), case_id=case.id, media_id=media_id, created_by=user.id)
    tasks = [
        Task(id=uuid.uuid4(), job_id=job.id, media_id=media_id, analyzer=name, analyzer_version=version)
        for name in (analyzer, *more)
    ]
    async with resources.sessions() as session:
        for row in (user, case, media, job):  # parents first: there are no relationship()s to order them
            session.add(row)
            await session.flush()
        session.add_all(tasks)
        await session.commit()
    return tasks[0]


async def tasks_of(resources: Resources, job_id: uuid.UUID) -> list[Task]:
    async with resources.sessions() as session:
        return list((await session.execute(select(Task).where(Task.job_id == job_id))).scalars())


async def reload(resources: Resources, task: Task) -> tuple[Task, Job]:
    async with resources.sessions() as session:
        row = (await session.execute(select(Task, Job).join(Job).where(Task.id == task.id))).one()
        return row.Task, row.Job


def ctx(resources: Resources, job_try: int = 1) -> dict[str, Any]:
    return {"resources": resources, "worker_name": "test-worker", "job_try": job_try}


async def test_success_stores_one_result_and_closes_the_job(
    scripted: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks_module, "PROGRESS_INTERVAL_S", 0.0)  # let the analyzer's progress report through
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


async def test_a_transient_error_waits_and_runs_again(scripted: Resources) -> None:
    task = await new_task(scripted, "flaky")
    assert await run_analysis_task(ctx(scripted), str(task.id), 0) == "waiting"
    stored, _ = await reload(scripted, task)
    assert (stored.state, stored.error_code) == (TaskState.WAITING_FOR_MODEL, "BACKEND_UNAVAILABLE")
    assert stored.next_attempt_at is not None
    # Its next run is a delivery of its next generation; the first one, delivered again, is refused.
    assert await scripted.arq.exists(f"arq:job:{arq_job_id(task.id, 1)}")
    assert await run_analysis_task(ctx(scripted), str(task.id), 0) == "skipped"
    assert await run_analysis_task(ctx(scripted), str(task.id), 1) == "succeeded"
    stored, job = await reload(scripted, task)
    assert (stored.state, stored.attempts, stored.error_code, job.state) == (
        TaskState.SUCCEEDED,
        2,
        None,
        JobState.SUCCEEDED,
    )


async def test_a_task_whose_media_was_deleted_is_skipped(scripted: Resources) -> None:
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


async def test_concurrent_finishers_close_the_job_once_and_a_failure_fails_it(scripted: Resources) -> None:
    first = await new_task(scripted, "ok", "corrupt", "crash")
    tasks = await tasks_of(scripted, first.job_id)
    async with JobEventStream(scripted.redis, scripted.settings.redis_prefix, str(first.job_id)) as stream:
        outcomes = await asyncio.gather(*(run_analysis_task(ctx(scripted), str(t.id)) for t in tasks))
        assert sorted(outcomes) == ["failed", "failed", "succeeded"]
        job_events = []
        while (event := await stream.next(wait_s=1)) is not None:
            if event.task_id is None:
                job_events.append(event)
    assert [e.job_state for e in job_events] == ["failed"]  # exactly one job-ended event
    _, job = await reload(scripted, first)
    assert job.state is JobState.FAILED and job.finished_at is not None


async def test_a_stale_run_cannot_overwrite_a_newer_outcome(scripted: Resources) -> None:
    from aima.services import task_runs

    task = await new_task(scripted, "ok")
    stale = await task_runs.start_task(resources=scripted, task_id=task.id, worker="stale-worker")
    assert stale is not None
    # A running task is not claimed again while it is running.
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "skipped"
    # The stale worker vanished; the reconciler queued the task again and it succeeded.
    async with scripted.sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        row.state = TaskState.QUEUED
        await session.commit()
    assert await run_analysis_task(ctx(scripted), str(task.id), 1) == "succeeded"
    assert not await task_runs.finish_task(
        resources=scripted, run=stale, state=TaskState.FAILED, error_code="LATE", error_message="late"
    )
    stored, job = await reload(scripted, task)
    assert (stored.state, stored.attempts, stored.error_code, job.state) == (
        TaskState.SUCCEEDED,
        2,
        None,
        JobState.SUCCEEDED,
    )


async def test_a_worker_with_another_analyzer_version_refuses(scripted: Resources) -> None:
    task = await new_task(scripted, "ok")
    async with scripted.sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        row.analyzer_version = "9.9"
        await session.commit()
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "failed"
    stored, _ = await reload(scripted, task)
    assert stored.error_code == "ANALYZER_VERSION_MISMATCH"
    assert await scripted.results.count_documents({"media_id": str(task.media_id)}) == 0


async def test_a_cancelled_run_goes_back_in_line(scripted: Resources) -> None:
    gate = asyncio.Event()

    class Slow(Scripted):
        async def analyze(self, item: AnalysisInput) -> BaseModel:
            gate.set()
            await asyncio.sleep(30)
            return Count(calls=0)

    pm = create_plugin_manager(load_external=False)

    class SlowPlugin:
        @aima.hookimpl
        def register_analyzers(self, register: Any) -> None:
            register(Slow("ok", "ok"))

    pm.register(SlowPlugin(), name="slow")
    slow = dataclasses.replace(scripted, analyzers=AnalyzerRegistry(pm))
    task = await new_task(slow, "ok")
    running = asyncio.create_task(run_analysis_task(ctx(slow), str(task.id)))
    await asyncio.wait_for(gate.wait(), 5)
    running.cancel()  # what arq does to running jobs when the worker shuts down
    with pytest.raises(asyncio.CancelledError):
        await running
    stored, job = await reload(slow, task)
    assert (stored.state, stored.error_code, job.state) == (TaskState.QUEUED, "TASK_INTERRUPTED", JobState.RUNNING)
    assert await run_analysis_task(ctx(scripted), str(task.id)) == "succeeded"


async def test_a_quick_task_sends_no_progress_events(scripted: Resources) -> None:
    task = await new_task(scripted, "ok")
    async with JobEventStream(scripted.redis, scripted.settings.redis_prefix, str(task.job_id)) as stream:
        await run_analysis_task(ctx(scripted), str(task.id))
        messages = []
        while (event := await stream.next(wait_s=0.5)) is not None:
            messages.append(event.message)
    assert messages == ["ok started", "ok succeeded", "job succeeded"]
