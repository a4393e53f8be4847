"""Priorities: on a busy worker with one slot, the tasks of a high-priority job start before queued normal and low
ones, whatever the order they were queued in; and tasks go only to workers of the resource they run on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aima.db.models import JobState, Priority, TaskState
from aima.resources import Resources, open_resources
from aima.settings import Settings
from aima.testing.analyzers import ENDPOINT, SLEEP_ENV
from tests.conftest import Servers, worker_thread
from tests.workers.jobs import (
    analyze,
    eventually,
    job_ends,
    job_settings,
    job_tasks,
    new_case,
    registry_with_test_analyzers,
)


@pytest.fixture(scope="module")
def settings(servers: Servers) -> Settings:
    return job_settings(servers, max_jobs=1)


@pytest.fixture(scope="module")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as opened:
        yield opened


async def test_high_priority_tasks_start_before_queued_lower_ones(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.4")
    blocker = await new_case(resources)
    cases = {priority: await new_case(resources, media=2) for priority in Priority}
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]):
        first = await analyze(resources, blocker, ["sleeper"])

        async def blocking() -> bool:
            return (await job_tasks(resources, first))[0].state is TaskState.RUNNING

        await eventually(blocking, 30, "the first task runs")
        # Queued while the only slot is busy, lowest first.
        jobs = {}
        for priority in (Priority.LOW, Priority.NORMAL, Priority.HIGH):
            jobs[priority] = await analyze(resources, cases[priority], ["sleeper"], priority=priority)
        for job_id in (first, *jobs.values()):
            assert await job_ends(resources, job_id, 20) is JobState.SUCCEEDED
    started = []
    for priority, job_id in jobs.items():
        started.extend((task.started_at, priority) for task in await job_tasks(resources, job_id))
    started.sort()
    assert [priority for _, priority in started] == [
        Priority.HIGH,
        Priority.HIGH,
        Priority.NORMAL,
        Priority.NORMAL,
        Priority.LOW,
        Priority.LOW,
    ]
    for job_id in jobs.values():
        assert {t.priority for t in await job_tasks(resources, job_id)} <= {str(p) for p in Priority}


async def test_a_task_goes_only_to_workers_of_its_resource(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0")
    case = await new_case(resources)
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]):  # serves cpu only
        job_id = await analyze(resources, case, ["remote-model", "sleeper"])
        tasks = {t.analyzer: t for t in await job_tasks(resources, job_id)}
        assert (tasks["remote-model"].resource, tasks["sleeper"].resource) == (ENDPOINT, "cpu")

        async def sleeper_done() -> bool:
            done = {t.analyzer: t.state for t in await job_tasks(resources, job_id)}
            return done["sleeper"] is TaskState.SUCCEEDED

        await eventually(sleeper_done, 30, "the cpu task ran")
        await asyncio.sleep(0.3)
        states = {t.analyzer: t.state for t in await job_tasks(resources, job_id)}
        assert states["remote-model"] is TaskState.QUEUED  # no worker of its endpoint
