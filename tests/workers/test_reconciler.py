"""The reconciler: runs whose worker vanished run again under a fresh delivery (arq's lock on the old one does not
matter), out of tries they fail, of a cancelled job they end cancelled; deliveries Redis lost are rebuilt from
PostgreSQL; a worker whose run was taken over stops it. A database of this module's own: the reconciler takes every
task of its database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy import update

from aima import queues
from aima.db.models import JobState, Task, TaskState
from aima.errors import ModelUnavailable
from aima.resources import Resources, open_resources
from aima.services import task_runs
from aima.services.reconcile import WORKER_LOST, reconcile
from aima.services.task_runs import arq_job_id
from aima.settings import Settings
from aima.testing.analyzers import SLEEP_ENV
from aima.workers.process import WorkerProcess
from aima.workers.settings import cron_jobs
from tests.conftest import Servers, worker_thread
from tests.isolation import fresh_database
from tests.workers.jobs import (
    analyze,
    eventually,
    job_ends,
    job_row,
    job_settings,
    job_tasks,
    new_case,
    registry_with_test_analyzers,
    results_of,
)

GRACE_S = 0.5


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def settings(servers: Servers, database_url: str) -> Settings:
    return job_settings(
        servers, database_url=database_url, heartbeat_timeout_s=GRACE_S, heartbeat_s=0.2, reconcile_interval_s=1
    )


@pytest.fixture(scope="module")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as opened:
        yield opened


async def vanished_worker_took(resources: Resources, task_id: uuid.UUID) -> task_runs.TaskRun:
    """What a worker that is killed in the middle of a task leaves: the task running for it in PostgreSQL, and
    arq's lock on its delivery (an hour: the function timeout + 10 s)."""
    run = await task_runs.start_task(resources=resources, task_id=task_id, worker="ghost:1", generation=0)
    assert run is not None
    await resources.arq.psetex(in_progress_key_prefix + arq_job_id(task_id), 3_610_000, b"1")
    await asyncio.sleep(GRACE_S + 0.1)  # its heartbeat goes stale
    return run


def cpu_queue(resources: Resources) -> str:
    return queues.queue_name(resources.settings, queues.CPU)


async def test_a_run_whose_worker_vanished_runs_again_at_once(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.05")
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["sleeper"])
    [task] = await job_tasks(resources, job_id)
    ghost = await vanished_worker_took(resources, task.id)

    report = await reconcile(resources)
    assert (report.requeued, report.failed, report.cancelled) == ([task.id], [], [])
    [task] = await job_tasks(resources, job_id)
    assert (task.state, task.attempts, task.error_code) == (TaskState.QUEUED, 1, WORKER_LOST)
    assert await resources.arq.zscore(cpu_queue(resources), arq_job_id(task.id, 1)) is not None
    assert (await reconcile(resources)).requeued == []  # once

    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]):
        assert await job_ends(resources, job_id, 10) is JobState.SUCCEEDED
        # The vanished worker's delivery, once its lock is gone, finds the task moved on and is skipped.
        await resources.arq.delete(in_progress_key_prefix + arq_job_id(task.id))
        await eventually(lambda: _queue_empty(resources), 10, "the old delivery is taken from the queue and skipped")
    [task] = await job_tasks(resources, job_id)
    assert (task.state, task.attempts, task.error_code) == (TaskState.SUCCEEDED, 2, None)
    assert len(await results_of(resources, case)) == 1
    # The vanished run can change nothing any more.
    assert await task_runs.finish_task(resources=resources, run=ghost, state=TaskState.FAILED) is None


async def _queue_empty(resources: Resources) -> bool:
    return await resources.arq.zcard(cpu_queue(resources)) == 0


async def test_the_reconciler_runs_in_the_workers_every_few_seconds(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.05")
    case = await new_case(resources, media=2)
    job_id = await analyze(resources, case, ["sleeper"])
    first = (await job_tasks(resources, job_id))[0]
    await vanished_worker_took(resources, first.id)
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=cron_jobs(settings)):
        assert await job_ends(resources, job_id, 10) is JobState.SUCCEEDED
    tasks = {t.id: t for t in await job_tasks(resources, job_id)}
    assert tasks[first.id].attempts == 2
    assert len(await results_of(resources, case)) == 2


async def test_out_of_tries_a_lost_run_fails(servers: Servers, database_url: str, resources: Resources) -> None:
    strict = job_settings(servers, database_url=database_url, heartbeat_timeout_s=GRACE_S, max_tries=1)
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["sleeper"])
    [task] = await job_tasks(resources, job_id)
    ghost = await vanished_worker_took(resources, task.id)
    async with open_resources(strict, analyzers=registry_with_test_analyzers()) as own:
        report = await reconcile(own)
    assert report.failed == [task.id]
    [task] = await job_tasks(resources, job_id)
    assert (task.state, task.error_code) == (TaskState.FAILED, WORKER_LOST)
    assert "stopped responding" in (task.error_message or "")
    assert (await job_row(resources, job_id)).state is JobState.FAILED

    # Retried from the start, the task counts its runs from 0 again: its new first run is not the ghost's. Its
    # deliveries are of a new generation: one of the first round (the ghost's, once arq's lock expires) is refused.
    assert await task_runs.retry_failed(resources=resources, job_id=job_id) == [task.id]
    [task] = await job_tasks(resources, job_id)
    assert (task.attempts, task.generation) == (0, 2)
    assert await resources.arq.zscore(cpu_queue(resources), arq_job_id(task.id, task.generation)) is not None
    assert await task_runs.start_task(resources=resources, task_id=task.id, worker="w:2", generation=0) is None
    new = await task_runs.start_task(resources=resources, task_id=task.id, worker="w:2", generation=task.generation)
    assert new is not None and new.attempt == ghost.attempt == 1
    assert await task_runs.finish_task(resources=resources, run=ghost, state=TaskState.FAILED) is None
    assert (await task_runs.heartbeat(resources=resources, runs=[ghost])).lost == {task.id}
    assert await task_runs.finish_task(resources=resources, run=new, state=TaskState.SUCCEEDED) is TaskState.SUCCEEDED
    assert (await job_row(resources, job_id)).state is JobState.SUCCEEDED


async def test_a_lost_run_of_a_cancelled_job_ends_cancelled(resources: Resources) -> None:
    case = await new_case(resources, media=2)
    job_id = await analyze(resources, case, ["sleeper"])
    first = (await job_tasks(resources, job_id))[0]
    await vanished_worker_took(resources, first.id)
    outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert outcome is not None and outcome.stopping == 1  # nobody will stop it: its worker is gone
    report = await reconcile(resources)
    assert report.cancelled == [first.id]
    assert {t.state for t in await job_tasks(resources, job_id)} == {TaskState.CANCELLED}
    assert (await job_row(resources, job_id)).state is JobState.CANCELLED


async def test_queues_lost_by_redis_are_rebuilt_from_postgresql(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.05")
    case = await new_case(resources, media=3)
    job_id = await analyze(resources, case, ["sleeper"])
    waiting_case = await new_case(resources)
    waiting_job = await analyze(resources, waiting_case, ["remote-model"])
    [waiting] = await job_tasks(resources, waiting_job)
    run = await task_runs.start_task(resources=resources, task_id=waiting.id, worker="w:1", generation=0)
    assert run is not None
    delay = await task_runs.retry_later(resources=resources, run=run, reason=ModelUnavailable("busy"))
    assert delay is not None
    async with resources.engine.begin() as conn:  # a backoff long enough to see it kept
        due = datetime.now(UTC) + timedelta(seconds=300)
        await conn.execute(update(Task).where(Task.id == waiting.id).values(next_attempt_at=due))

    # Redis loses everything of these queues (a restart without persistence, a failover).
    tasks = await job_tasks(resources, job_id)
    endpoint_queue = queues.queue_name(resources.settings, "test-endpoint")
    await resources.arq.delete(
        cpu_queue(resources),
        endpoint_queue,
        *(job_key_prefix + arq_job_id(t.id) for t in tasks),
        job_key_prefix + arq_job_id(waiting.id, 1),
    )
    assert (await reconcile(resources)).redelivered == []  # too fresh: whoever queued them may be at it
    await asyncio.sleep(GRACE_S + 0.1)
    report = await reconcile(resources)
    assert sorted(report.redelivered) == sorted([*(t.id for t in tasks), waiting.id])
    score = await resources.arq.zscore(endpoint_queue, arq_job_id(waiting.id, 1))
    assert score is not None and abs(score / 1000 - due.timestamp()) < 1  # still waits for its backoff
    assert (await reconcile(resources)).redelivered == []

    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]):
        assert await job_ends(resources, job_id, 10) is JobState.SUCCEEDED
    assert {t.attempts for t in await job_tasks(resources, job_id)} == {1}
    [waiting] = await job_tasks(resources, waiting_job)
    assert waiting.state is TaskState.WAITING_FOR_MODEL
    await task_runs.request_cancel(resources=resources, job_id=waiting_job)


async def test_a_worker_whose_run_was_taken_over_stops_it(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "30")
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["sleeper"])
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]) as worker:
        process: WorkerProcess = await eventually(lambda: worker.ctx.get("process"), 30, "the worker started")
        await eventually(lambda: process.runs(), 30, "the task runs")
        # The reconciler thought the worker gone (a long pause) and queued the task again.
        async with resources.engine.begin() as conn:
            await conn.execute(
                update(Task).where(Task.job_id == job_id).values(state=TaskState.QUEUED, error_code=WORKER_LOST)
            )
        await eventually(lambda: not process.runs(), 2, "the worker stops the run that is no longer its own")
    [task] = await job_tasks(resources, job_id)
    assert (task.state, task.error_code) == (TaskState.QUEUED, WORKER_LOST)  # left as the reconciler set it
    assert await results_of(resources, case) == []
    await task_runs.request_cancel(resources=resources, job_id=job_id)
