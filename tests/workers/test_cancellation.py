"""Cancelling a job stops its queued tasks at once and aborts its running ones within 2 s, and nothing a cancelled
task made is kept; retrying a job runs its failed and cancelled tasks again. Real worker in a thread, real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import update

import aima
from aima.analysis import AnalysisInput, BlockingAnalyzer
from aima.db.models import Job, JobState, TaskState
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.services import task_runs
from aima.settings import Settings
from aima.testing import analyzers as test_analyzers
from aima.testing.analyzers import SLEEP_ENV, Ran
from aima.workers.tasks import run_analysis_task
from tests.conftest import Servers, worker_thread
from tests.workers.jobs import (
    analyze,
    eventually,
    job_ends,
    job_events,
    job_row,
    job_settings,
    job_tasks,
    new_case,
    results_of,
)

#: Set while a `Blocking` analyzer's thread runs; its runs count `finished`.
IN_THREAD = threading.Event()
FINISHED: list[float] = []


class Blocking(BlockingAnalyzer):
    """Library code that cannot be interrupted: 1.5 s in a thread."""

    name = "blocking"
    version = "1.0"
    needs = frozenset()
    result_model = Ran

    def analyze_blocking(self, item: AnalysisInput) -> BaseModel:
        IN_THREAD.set()
        time.sleep(1.5)
        FINISHED.append(time.monotonic())
        return Ran(pid=0)


class Gated(aima.Analyzer):
    """Waits until the test opens its gate (an asyncio event of the test's loop)."""

    name = "gated"
    version = "1.0"
    needs = frozenset()
    result_model = Ran
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        self.entered.set()
        await self.gate.wait()
        return Ran(pid=0)


class Doubles:
    @aima.hookimpl
    def register_analyzers(self, register: Any) -> None:
        register(Blocking())
        register(Gated())


def registry() -> AnalyzerRegistry:
    pm = create_plugin_manager(load_external=False)
    pm.register(test_analyzers, "aima.testing.analyzers")
    pm.register(Doubles(), "doubles")
    return AnalyzerRegistry(pm)


@pytest.fixture(scope="module")
def settings(servers: Servers) -> Settings:
    # Heartbeats slower than the 2 s limit: the cancellation message must do it.
    return job_settings(servers, max_jobs=1, heartbeat_s=5.0)


@pytest.fixture(scope="module")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=registry()) as opened:
        yield opened


async def running_task(resources: Resources, job_id: uuid.UUID) -> None:
    async def one_running() -> bool:
        return any(t.state is TaskState.RUNNING for t in await job_tasks(resources, job_id))

    await eventually(one_running, 30, "a task of the job runs")


async def test_cancel_stops_queued_tasks_and_aborts_the_running_one_within_2_s(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "30")
    case = await new_case(resources, media=3)
    with worker_thread(settings, analyzers=registry(), cron_jobs=[]):
        job_id = await analyze(resources, case, ["sleeper"])
        await running_task(resources, job_id)
        asked = time.monotonic()
        outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
        assert outcome is not None
        assert (outcome.job_state, len(outcome.cancelled), outcome.stopping) == (JobState.RUNNING, 2, 1)
        assert await job_ends(resources, job_id, 2.0) is JobState.CANCELLED
        took = time.monotonic() - asked
    assert took < 2.0
    tasks = await job_tasks(resources, job_id)
    assert {(t.state, t.error_code) for t in tasks} == {(TaskState.CANCELLED, "JOB_CANCELLED")}
    assert await results_of(resources, case) == []
    job = await job_row(resources, job_id)
    assert job.cancel_requested_at is not None and job.finished_at is not None
    events = await job_events(resources, job_id)
    assert events[-1].task_id is None and events[-1].job_state == JobState.CANCELLED
    assert sum(e.task_state == TaskState.CANCELLED for e in events) == 3
    # Asking again changes nothing.
    again = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert again == task_runs.Cancellation(job_state=JobState.CANCELLED, cancelled=[], stopping=0)
    assert await task_runs.request_cancel(resources=resources, job_id=uuid.uuid4()) is None


async def test_a_blocking_analyzer_is_left_to_finish_and_its_result_dropped(
    settings: Settings, resources: Resources
) -> None:
    case = await new_case(resources)
    IN_THREAD.clear()
    with worker_thread(settings, analyzers=registry(), cron_jobs=[]):
        job_id = await analyze(resources, case, ["blocking"])
        await eventually(IN_THREAD.is_set, 30, "the analyzer's thread runs")
        asked = time.monotonic()
        await task_runs.request_cancel(resources=resources, job_id=job_id)
        assert await job_ends(resources, job_id, 2.0) is JobState.CANCELLED
        assert time.monotonic() - asked < 1.0  # the thread still sleeps: the task did not wait for it
        await eventually(lambda: FINISHED and FINISHED[-1] > asked, 5, "the thread returns")
        await asyncio.sleep(0.2)
    assert await results_of(resources, case) == []
    [task] = await job_tasks(resources, job_id)
    assert task.state is TaskState.CANCELLED


async def test_a_cancelled_task_is_never_claimed(resources: Resources) -> None:
    case = await new_case(resources, media=2)
    job_id = await analyze(resources, case, ["sleeper"])  # no worker serves the queue
    outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert outcome is not None and (outcome.job_state, len(outcome.cancelled), outcome.stopping) == (
        JobState.CANCELLED,
        2,
        0,
    )
    ctx = {"resources": resources, "worker_name": "test-worker"}
    for task in await job_tasks(resources, job_id):
        assert await run_analysis_task(ctx, str(task.id), 0) == "skipped"
        assert (await job_tasks(resources, job_id))[0].state is TaskState.CANCELLED

    # A claim that races the request: the job is marked, its task not yet cancelled.
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["sleeper"])
    async with resources.engine.begin() as conn:
        await conn.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=Job.created_at))
    [task] = await job_tasks(resources, job_id)
    assert await task_runs.start_task(resources=resources, task_id=task.id, worker="w", generation=0) is None


async def test_a_run_that_ends_after_the_request_keeps_nothing(resources: Resources) -> None:
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["gated"])
    [task] = await job_tasks(resources, job_id)
    Gated.entered.clear()
    Gated.gate.clear()
    # Run without a worker process, so that no message stops it: only the finish can notice.
    ctx = {"resources": resources, "worker_name": "test-worker"}
    run = asyncio.create_task(run_analysis_task(ctx, str(task.id), 0))
    await asyncio.wait_for(Gated.entered.wait(), 10)
    outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert outcome is not None and outcome.stopping == 1
    Gated.gate.set()
    assert await run == "cancelled"
    assert await results_of(resources, case) == []
    [task] = await job_tasks(resources, job_id)
    assert (task.state, task.error_code) == (TaskState.CANCELLED, "JOB_CANCELLED")
    assert (await job_row(resources, job_id)).state is JobState.CANCELLED


async def test_a_missed_message_is_caught_by_the_heartbeat(
    servers: Servers, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "30")
    settings = job_settings(servers, heartbeat_s=0.3)
    case = await new_case(resources)
    own = dataclasses.replace(resources, settings=settings)
    with worker_thread(settings, analyzers=registry(), cron_jobs=[]):
        job_id = await analyze(own, case, ["sleeper"])
        await running_task(resources, job_id)
        async with resources.engine.begin() as conn:  # the request, without its message
            await conn.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=Job.created_at))
        assert await job_ends(resources, job_id, 2.0) is JobState.CANCELLED


async def test_retrying_runs_the_failed_and_cancelled_tasks_again(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = await new_case(resources, media=3)
    job_id = await analyze(resources, case, ["sleeper"])
    await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert await task_runs.retry_failed(resources=resources, job_id=uuid.uuid4()) == []
    monkeypatch.setenv(SLEEP_ENV, "0.05")
    with worker_thread(settings, analyzers=registry(), cron_jobs=[]):
        retried = await task_runs.retry_failed(resources=resources, job_id=job_id)
        assert sorted(retried) == sorted(t.id for t in await job_tasks(resources, job_id))
        assert await job_ends(resources, job_id, 10) is JobState.SUCCEEDED
    tasks = await job_tasks(resources, job_id)
    assert {(t.state, t.attempts, t.error_code) for t in tasks} == {(TaskState.SUCCEEDED, 1, None)}
    assert len(await results_of(resources, case)) == 3
    job = await job_row(resources, job_id)
    assert job.cancel_requested_at is None
    assert await task_runs.retry_failed(resources=resources, job_id=job_id) == []  # nothing failed
