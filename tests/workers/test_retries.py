"""Transient errors (a model endpoint that is down or busy) make a task wait and run again after a backoff with
jitter, shown as waiting for model; runs are bounded; permanent errors fail at once. A worker in a thread serves
the endpoint's queue; the endpoint is a small HTTP server (`tests/test_faults.py` has the 20 s outage with real
worker processes)."""

from __future__ import annotations

import re
import time

import pytest

from aima.db.models import JobState, TaskState
from aima.resources import open_resources
from aima.services.task_runs import backoff_s
from aima.settings import WorkerSettings
from aima.testing.processes import free_port
from tests.conftest import Servers
from tests.workers.jobs import (
    ModelEndpoint,
    analyze,
    endpoint_worker,
    eventually,
    job_ends,
    job_events,
    job_settings,
    job_tasks,
    new_case,
    registry_with_test_analyzers,
    results_of,
)


def test_the_backoff_grows_exponentially_with_full_jitter() -> None:
    worker = WorkerSettings(retry_base_s=1.0, retry_cap_s=8.0)
    for attempt, bound in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        waits = [backoff_s(worker, attempt) for _ in range(400)]
        assert all(0.0 <= w <= bound for w in waits), attempt
        assert max(waits) > 0.8 * bound and min(waits) < 0.2 * bound  # spread over the whole range


async def test_a_busy_model_endpoint_makes_the_task_wait_then_it_succeeds(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = job_settings(servers, retry_base_s=0.2, retry_cap_s=0.4, max_tries=50)
    busy_until = [0.0]
    endpoint = ModelEndpoint(lambda: time.monotonic() < busy_until[0])
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        case = await new_case(resources)
        busy_until[0] = time.monotonic() + 2.0
        with endpoint.serving(), endpoint_worker(settings, endpoint.url, monkeypatch):
            job_id = await analyze(resources, case, ["remote-model"])

            async def waiting() -> bool:
                [task] = await job_tasks(resources, job_id)
                return task.state is TaskState.WAITING_FOR_MODEL and task.next_attempt_at is not None

            await eventually(waiting, 2.0, "the task waits for the model")
            assert await job_ends(resources, job_id, 15) is JobState.SUCCEEDED
        [task] = await job_tasks(resources, job_id)
        assert task.state is TaskState.SUCCEEDED and task.error_code is None
        assert task.attempts == endpoint.requests and task.attempts > 2
        assert len(await results_of(resources, case)) == 1
        waits = [e for e in await job_events(resources, job_id) if e.task_state == TaskState.WAITING_FOR_MODEL]
        assert len(waits) == task.attempts - 1
        pattern = r"remote-model waiting for model: test-endpoint answered 503, next try in \d+\.\d s"
        assert all(re.fullmatch(pattern, e.message) for e in waits), waits[0].message
        assert {e.error_code for e in waits} == {"MODEL_UNAVAILABLE"}
        assert {e.job_state for e in waits} == {JobState.RUNNING}


async def test_runs_are_bounded_then_the_task_fails_with_the_last_reason(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = job_settings(servers, retry_base_s=0.05, retry_cap_s=0.1, max_tries=3)
    endpoint = ModelEndpoint(lambda: True, failing_status=429)
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        case = await new_case(resources)
        with endpoint.serving(), endpoint_worker(settings, endpoint.url, monkeypatch):
            job_id = await analyze(resources, case, ["remote-model"])
            assert await job_ends(resources, job_id, 10) is JobState.FAILED
        [task] = await job_tasks(resources, job_id)
        assert (task.state, task.attempts, task.error_code) == (TaskState.FAILED, 3, "MODEL_UNAVAILABLE")
        assert task.error_message == "test-endpoint answered 429 (gave up after 3 runs)"
        assert endpoint.requests == 3
        assert await results_of(resources, case) == []


async def test_a_permanent_error_fails_at_once(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = job_settings(servers, retry_base_s=0.05, max_tries=5)
    endpoint = ModelEndpoint(lambda: True, failing_status=400)
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        case = await new_case(resources)
        with endpoint.serving(), endpoint_worker(settings, endpoint.url, monkeypatch):
            job_id = await analyze(resources, case, ["remote-model"])
            assert await job_ends(resources, job_id, 10) is JobState.FAILED
        [task] = await job_tasks(resources, job_id)
        assert (task.attempts, task.error_code, task.error_message) == (1, "MODEL_ERROR", "test-endpoint answered 400")
        assert endpoint.requests == 1


async def test_an_unreachable_endpoint_is_waited_for(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = job_settings(servers, retry_base_s=0.05, retry_cap_s=0.1, max_tries=2)
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as resources:
        case = await new_case(resources)
        url = f"http://127.0.0.1:{free_port()}/generate"  # nothing listens: connections are refused
        with endpoint_worker(settings, url, monkeypatch):
            job_id = await analyze(resources, case, ["remote-model"])
            assert await job_ends(resources, job_id, 10) is JobState.FAILED
        [task] = await job_tasks(resources, job_id)
        assert task.error_code == "MODEL_UNAVAILABLE" and "unreachable" in (task.error_message or "")
        assert task.attempts == 2
